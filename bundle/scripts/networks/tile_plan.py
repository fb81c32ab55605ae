"""Whole or tiled: encode and decode whole volumes when they fit in the device's free memory, else in tiles.

`encode_tile` / `decode_tile` "auto" (the default) estimates the whole pass's peak as three
full-resolution activations as wide as the wider of the two finest levels (the decoder's last
upsampling runs the second level's channels at full size; bench/performance.py's budget estimates
48.7 GB for a whole highres decode at 512 x 512 x 128, this rule 51.5 GB) and tiles by `AUTO_TILE`
latent voxels when that passes half of the free memory; tiles give the same result up to float
rounding (`scripts.networks.tiling`), so the choice costs time, never accuracy.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence

import torch
from monai.networks.nets import AutoencoderKL

logger = logging.getLogger(__name__)

#: The value of `encode_tile` / `decode_tile` that lets the free memory decide.
AUTO = "auto"

#: Latent voxels per side of a tile when the whole volume would not fit (about 2 GB at 512 x 512 x 128, highres).
AUTO_TILE = 32

#: Full-resolution activations alive at the peak of a whole encode or decode.
PEAK_ACTIVATIONS = 3


def free_memory_bytes(device: torch.device | str) -> int:
    """Bytes free on `device`: the CUDA allocator's free memory, or the host's available memory."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def whole_volume_bytes(autoencoder: AutoencoderKL, image_shape: Sequence[int], dtype: torch.dtype) -> int:
    """Estimated peak bytes of encoding or decoding one whole volume of `image_shape` (X, Y, Z)."""
    full_resolution_channels = max(
        autoencoder.encoder.channels[:2]
    )  # the decoder upsamples the second level to full size
    element = torch.empty((), dtype=dtype).element_size()
    return PEAK_ACTIVATIONS * full_resolution_channels * math.prod(image_shape) * element


def planned_tile(
    tile: int | Sequence[int] | str | None,
    autoencoder: AutoencoderKL,
    image_shape: Sequence[int],
    device: torch.device | str,
    dtype: torch.dtype = torch.float32,
) -> int | Sequence[int] | None:
    """The tile to encode or decode a volume of `image_shape` with: `tile` as given, or for "auto" None (whole) when it fits."""
    if tile != AUTO:
        return tile
    needed, free = whole_volume_bytes(autoencoder, image_shape, dtype), free_memory_bytes(device)
    if needed <= free // 2:
        return None
    logger.info(
        "a whole %s volume needs about %.1f GB of the %.1f GB free: tiles of %d latent voxels",
        list(image_shape),
        needed / 1e9,
        free / 1e9,
        AUTO_TILE,
    )
    return AUTO_TILE
