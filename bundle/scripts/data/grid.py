"""The working grid: voxels per axis (a cube or three sizes), their spacing over the field of view, and the sizes the networks take."""

from __future__ import annotations

from collections.abc import Sequence


def grid_shape(grid_size: int | Sequence[int]) -> list[int]:
    """The working grid's voxels per axis: a cube of `grid_size`, or three sizes as given."""
    sizes = [int(grid_size)] * 3 if isinstance(grid_size, int) else [int(n) for n in grid_size]
    if len(sizes) != 3 or min(sizes) < 1:
        raise ValueError(f"grid_size must be one positive size or three, got {grid_size}")
    return sizes


def grid_spacing(field_of_view_mm: Sequence[float], image_size: Sequence[int]) -> list[float]:
    """Voxel spacing (mm) of `image_size` voxels over `field_of_view_mm`, per axis."""
    return [f / n for f, n in zip(field_of_view_mm, image_size, strict=True)]


def downsampling(channels: Sequence[int]) -> int:
    """How much a MONAI AutoencoderKL or DiffusionModelUNet with these level `channels` shrinks each axis (2 per level)."""
    return 2 ** (len(channels) - 1)


def network_grid(
    grid_size: int | Sequence[int], autoencoder_channels: Sequence[int], diffusion_channels: Sequence[int]
) -> list[int]:
    """`grid_size` as the working grid's three sizes, refused at start-up when the networks cannot take it.

    Every size must divide by the autoencoder's downsampling times the U-Net's, so that each
    U-Net level halves whole latent voxels; the error names `image_size` and the nearest sizes.
    """
    sizes = grid_shape(grid_size)
    factor = downsampling(autoencoder_channels) * downsampling(diffusion_channels)
    if all(n % factor == 0 for n in sizes):
        return sizes
    nearest = [
        str(n)
        if n % factor == 0
        else " or ".join(str(m) for m in (n // factor * factor, (n // factor + 1) * factor) if m)
        for n in sizes
    ]
    raise ValueError(
        f"image_size {sizes} does not fit the networks: each size must be a multiple of {factor} (the autoencoder's "
        f"{downsampling(autoencoder_channels)}x times the U-Net's {downsampling(diffusion_channels)}x downsampling); "
        f"nearest sizes that work: [{', '.join(nearest)}]"
    )
