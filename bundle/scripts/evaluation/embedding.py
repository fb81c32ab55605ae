"""Two-dimensional pictures of a set of volumes: t-SNE of their latents or features, KMeans++ clusters, scatter plots."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.cluster import KMeans  # noqa: E402
from sklearn.manifold import TSNE  # noqa: E402

MARKERS = ("o", "^", "s", "x", "D", "v")


def tsne_2d(vectors: np.ndarray, seed: int = 0) -> np.ndarray:
    """t-SNE of row vectors to 2D (sklearn), with a perplexity small sets allow (it must stay below the number of points)."""
    n = len(vectors)
    if n < 3:
        raise ValueError(f"t-SNE needs at least three volumes, got {n}")
    perplexity = float(min(30.0, max(1.0, (n - 1) / 3.0)))
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(
        vectors.astype(np.float32)
    )


def kmeans_clusters(vectors: np.ndarray, n_clusters: int = 5, seed: int = 0) -> np.ndarray:
    """KMeans++ cluster of each row vector (at most one cluster per vector), as the thesis clustered its scans."""
    k = min(n_clusters, len(vectors))
    return KMeans(n_clusters=k, init="k-means++", n_init=10, random_state=seed).fit_predict(vectors)


def scatter(points: np.ndarray, colours: Sequence[str], markers: Sequence[str], path: str | Path, title: str) -> Path:
    """Scatter `points` (n, 2) coloured by one label and shaped by another (which may be the same), with a legend."""
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    colour_names, marker_names = sorted(set(colours)), sorted(set(markers))
    cmap = plt.get_cmap("tab10")
    for ci, c in enumerate(colour_names):
        for mi, m in enumerate(marker_names):
            chosen = [i for i in range(len(points)) if colours[i] == c and markers[i] == m]
            if chosen:
                ax.scatter(
                    *points[chosen].T,
                    color=cmap(ci % 10),
                    marker=MARKERS[mi % len(MARKERS)],
                    label=c if c == m else f"{c}, {m}",
                    s=40,
                )
    ax.legend(fontsize=8, loc="best")
    ax.set_title(title)
    ax.set_xlabel("t-SNE 1")
    ax.set_ylabel("t-SNE 2")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return Path(path)
