"""Decoding benchmark: whole versus tiled VAE decoding (`scripts.networks.tiling`), in time, memory and HU difference.

Measured on trained weights; the GPU memory of the thesis decoder at 128^3 and 256^3 is estimated
on fake tensors, with the attention kernel the networks are loaded with (scaled dot-product) and
with the explicit attention matrix (MONAI's attention without `use_flash_attention`). `volume_work`
(a whole volume decoded, encoded or reconstructed, whole or tiled) is what the budget sizes too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from configurations import Configuration
from measure import PeakMemory, timed
from memory_estimate import Work, estimate, mixed_precision
from monai.networks.nets import AutoencoderKL

from scripts.networks.loading import INFERENCE_OPTIONS
from scripts.networks.tiling import TiledDecoder, TiledEncoder, tiled_reconstruct
from scripts.sampling.sampler import LatentDiffusionSampler


def tiling_rows(sampler: LatentDiffusionSampler, tiles: Sequence[int | None], seed: int = 0) -> list[dict[str, Any]]:
    """Decode one latent whole and with each tile size: seconds, measured peak memory, and HU difference from the whole volume."""
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn((1, *sampler.record["latent_shape"]), generator=generator).to(sampler.device)
    rows, whole = [], None
    for tile in tiles:
        tiled = LatentDiffusionSampler(
            sampler.autoencoder, sampler.unet, sampler.record, device=sampler.device, decode_tile=tile
        )
        with PeakMemory(sampler.device) as memory:
            (volume,), seconds = timed(lambda: tiled.decode(latents), sampler.device)
        whole = volume.astype(np.int32) if tile is None else whole
        difference = np.abs(volume.astype(np.int32) - whole)
        rows.append(
            {
                "grid": sampler.record["image_size"][0],
                "decode_tile": tile or "whole",
                "seconds": seconds,
                "peak_gib": memory.peak_gib,
                "max_abs_hu_difference": int(difference.max()),
                "mean_abs_hu_difference": float(difference.mean()),
            }
        )
    return rows


def _decode(autoencoder: AutoencoderKL, latents: torch.Tensor, tile: int | None) -> torch.Tensor:
    """Images from latents, as the sampler decodes them."""
    return TiledDecoder(autoencoder, tile)(latents) if tile else autoencoder.decode_stage_2_outputs(latents)


def _encode(autoencoder: AutoencoderKL, images: torch.Tensor, tile: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and sigma of images, as the latent encoding of the noise stages computes them."""
    return TiledEncoder(autoencoder, tile)(images) if tile else autoencoder.encode(images)


def _reconstruct(autoencoder: AutoencoderKL, images: torch.Tensor, tile: int | None) -> torch.Tensor:
    """Decoded posterior means of images, as the autoencoder's validation computes them."""
    return tiled_reconstruct(autoencoder, images, tile) if tile else autoencoder.reconstruct(images)


#: What `volume_work` can run, by name.
VOLUME_OPERATIONS: dict[str, Callable[[AutoencoderKL, torch.Tensor, int | None], Any]] = {
    "decode": _decode,
    "encode": _encode,
    "reconstruct": _reconstruct,
}


def volume_work(
    config: Configuration,
    operation: str,
    tile: int | None,
    dtype: torch.dtype | None = None,
    network_options: dict[str, Any] | None = None,
    beside: Callable[[torch.device], list[torch.Tensor]] = lambda _: [],
) -> Work:
    """One whole volume of `config` through the autoencoder: `operation` decode, encode or reconstruct, whole or in tiles.

    `dtype` autocasts (None: float32); `network_options` default to the sampler's (scaled dot-product attention);
    `beside(device)` builds the tensors other networks keep on the device meanwhile (weights, a trainer's state).
    """
    if operation not in VOLUME_OPERATIONS:
        raise ValueError(f"operation must be one of {sorted(VOLUME_OPERATIONS)}, got {operation!r}")
    options = INFERENCE_OPTIONS if network_options is None else network_options

    def setup(device: torch.device) -> dict[str, Any]:
        shape = config.latent_shape if operation == "decode" else [1, *config.image_size]
        with device:
            autoencoder = AutoencoderKL(**{**config.autoencoder_kwargs, **options}).eval()
            return {"autoencoder": autoencoder, "input": torch.randn((1, *shape)), "beside": beside(device)}

    @torch.no_grad()
    def step(s: dict[str, Any]) -> Any:
        with mixed_precision(dtype, s["input"].device.type):
            return VOLUME_OPERATIONS[operation](s["autoencoder"], s["input"], tile)

    return Work(setup, step, lambda s: [*s["autoencoder"].parameters(), s["input"], *s["beside"]], warmup=False)


def decode_estimate_gib(config: Configuration, tile: int | None, as_loaded: bool = True) -> float:
    """Estimated GPU GiB of decoding one latent of `config`, whole or in tiles, as loaded for sampling or with explicit attention."""
    options = INFERENCE_OPTIONS if as_loaded else {"use_flash_attention": False}
    return estimate(volume_work(config, "decode", tile, network_options=options)).peak_gib


def decode_memory_rows(configs: Sequence[Configuration], tiles: Sequence[int | None]) -> list[dict[str, Any]]:
    """Estimated GPU GiB of whole and tiled decoding for each configuration, as loaded for sampling and with explicit attention."""
    rows = []
    for config in configs:
        for tile in tiles:
            row = {"size": config.name, "grid": config.grid, "decode_tile": tile or "whole"}
            row["estimated_gpu_gib"] = decode_estimate_gib(config, tile)
            row["estimated_gpu_gib_explicit_attention"] = decode_estimate_gib(config, tile, as_loaded=False)
            rows.append(row)
    return rows
