"""PNG previews of a CT volume: axial, coronal and sagittal mid-slices in a lung-and-soft-tissue window."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def mid_slices(volume: np.ndarray, spacing: tuple[float, float, float]) -> list[tuple[str, np.ndarray, float]]:
    """(view, 2D slice for imshow, pixel aspect) of the mid-planes of a RAS volume, in radiological convention.

    Axial and coronal views show the patient's right on the image's left; superior and anterior are up.
    """
    cx, cy, cz = (s // 2 for s in volume.shape)
    sx, sy, sz = spacing
    return [
        ("axial", volume[::-1, :, cz].T[::-1], sy / sx),
        ("coronal", volume[::-1, cy, :].T[::-1], sz / sx),
        ("sagittal", volume[cx, :, :].T[::-1], sz / sy),
    ]


def save_preview(
    hu: np.ndarray, spacing, path: str | Path, title: str = "", window: tuple[float, float] = (-1000.0, 400.0)
) -> Path:
    """Write the three mid-slices of `hu` (RAS, HU) side by side to `path`."""
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.4))
    for ax, (name, image, aspect) in zip(axes, mid_slices(np.asarray(hu, np.float32), tuple(spacing))):
        ax.imshow(image, cmap="gray", vmin=window[0], vmax=window[1], aspect=aspect, interpolation="nearest")
        ax.set_title(name)
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return Path(path)
