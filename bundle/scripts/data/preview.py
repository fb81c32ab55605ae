"""PNG previews of a CT volume: axial, coronal and sagittal slices in a lung-and-soft-tissue window."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def orthogonal_slices(
    volume: np.ndarray, spacing: tuple[float, float, float], centre: tuple[int, int, int] | None = None
) -> list[tuple[str, np.ndarray, float]]:
    """(view, 2D slice for imshow, pixel aspect) of the three planes through `centre` (default: the middle) of a RAS volume.

    Radiological convention: axial and coronal views show the patient's right on the image's left;
    superior and anterior are up.
    """
    cx, cy, cz = centre if centre is not None else (s // 2 for s in volume.shape)
    sx, sy, sz = spacing
    return [
        ("axial", volume[::-1, :, cz].T[::-1], sy / sx),
        ("coronal", volume[::-1, cy, :].T[::-1], sz / sx),
        ("sagittal", volume[cx, :, :].T[::-1], sz / sy),
    ]


def save_preview(
    hu: np.ndarray,
    spacing,
    path: str | Path,
    title: str = "",
    mask: np.ndarray | None = None,
    window: tuple[float, float] = (-1000.0, 400.0),
    before: np.ndarray | None = None,
) -> Path:
    """Write three orthogonal slices of `hu` (RAS, HU) side by side to `path`.

    With a `mask`, the slices pass through its centroid and its outline is drawn in red. With `before` (the same grid),
    a first row shows it, for a CT that was changed.
    """
    centre = tuple(int(round(c)) for c in np.argwhere(mask).mean(0)) if mask is not None and mask.any() else None
    outlines = orthogonal_slices(np.asarray(mask, np.float32), tuple(spacing), centre) if centre else [None] * 3
    rows = [("before: ", before), ("after: ", hu)] if before is not None else [("", hu)]
    fig, axes = plt.subplots(len(rows), 3, figsize=(12, 4.4 * len(rows)), squeeze=False)
    for row, (label, volume) in zip(axes, rows):
        views = orthogonal_slices(np.asarray(volume, np.float32), tuple(spacing), centre)
        for ax, (name, image, aspect), outline in zip(row, views, outlines):
            ax.imshow(image, cmap="gray", vmin=window[0], vmax=window[1], aspect=aspect, interpolation="nearest")
            if outline is not None and outline[1].any():
                ax.contour(outline[1], levels=[0.5], colors="red", linewidths=1.0)
            ax.set_title(label + name)
            ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return Path(path)
