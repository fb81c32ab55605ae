"""Evaluation figures of CT volumes: original, reconstruction and absolute error side by side; a latent interpolation strip."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from scripts.data.preview import orthogonal_slices  # noqa: E402

#: Display window of CT slices (lung and soft tissue), HU.
CT_WINDOW = (-1000.0, 400.0)


def save_reconstruction(
    hu: np.ndarray, reconstruction: np.ndarray, spacing: Sequence[float], path: str | Path, title: str
) -> Path:
    """Rows CT, reconstruction and |error| (HU) of the three mid-planes, as the thesis' figures 6.3 and 6.4."""
    error = np.abs(reconstruction.astype(np.float32) - hu.astype(np.float32))
    rows = [
        ("CT", hu, "gray", CT_WINDOW),
        ("reconstruction", reconstruction, "gray", CT_WINDOW),
        ("|error| HU", error, "hot", (0.0, 500.0)),
    ]
    fig, axes = plt.subplots(3, 3, figsize=(10, 9), layout="constrained")
    for r, (label, volume, cmap, (low, high)) in enumerate(rows):
        for c, (view, image, aspect) in enumerate(orthogonal_slices(np.asarray(volume, np.float32), tuple(spacing))):
            shown = axes[r, c].imshow(image, cmap=cmap, vmin=low, vmax=high, aspect=aspect, interpolation="nearest")
            axes[r, c].set_title(f"{label}, {view}", fontsize=9)
            axes[r, c].axis("off")
        fig.colorbar(shown, ax=axes[r, :].tolist(), shrink=0.8)
    fig.suptitle(title)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return Path(path)


def save_strip(
    volumes: Sequence[np.ndarray], labels: Sequence[str], spacing: Sequence[float], path: str | Path, title: str
) -> Path:
    """Axial and coronal mid-planes of `volumes` (HU) in a row each, as the thesis' interpolation figure 6.7."""
    fig, axes = plt.subplots(2, len(volumes), figsize=(2.2 * len(volumes), 4.8), squeeze=False)
    for c, (volume, label) in enumerate(zip(volumes, labels)):
        views = {
            view: (image, aspect)
            for view, image, aspect in orthogonal_slices(np.asarray(volume, np.float32), tuple(spacing))
        }
        for r, view in enumerate(("axial", "coronal")):
            image, aspect = views[view]
            axes[r, c].imshow(
                image, cmap="gray", vmin=CT_WINDOW[0], vmax=CT_WINDOW[1], aspect=aspect, interpolation="nearest"
            )
            axes[r, c].set_title(label if r == 0 else "", fontsize=9)
            axes[r, c].axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return Path(path)
