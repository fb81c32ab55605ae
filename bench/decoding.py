"""Decoding benchmark: whole versus tiled VAE decoding (`scripts.sampling.tiled_decoding`), in time, memory and HU difference.

Measured on trained weights; the GPU memory of the thesis decoder at 128^3 and 256^3 is estimated
on fake tensors, with the attention kernel the networks are loaded with (scaled dot-product) and
with the explicit attention matrix (MONAI's attention without `use_flash_attention`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from configurations import Configuration
from measure import PeakMemory, timed
from memory_estimate import estimate_peak_gib
from monai.networks.nets import AutoencoderKL

from scripts.networks.loading import INFERENCE_OPTIONS
from scripts.sampling.sampler import LatentDiffusionSampler
from scripts.sampling.tiled_decoding import TiledDecoder


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


def decode_estimate_gib(config: Configuration, tile: int | None, as_loaded: bool = True) -> float:
    """Estimated GPU GiB of decoding one latent of `config`, whole or in tiles, as loaded for sampling or with explicit attention."""

    def setup() -> tuple[AutoencoderKL, torch.Tensor]:
        explicit = {"use_flash_attention": False}
        autoencoder = AutoencoderKL(
            **{**config.autoencoder_kwargs, **(INFERENCE_OPTIONS if as_loaded else explicit)}
        ).eval()
        return autoencoder, torch.randn((1, *config.latent_shape))

    @torch.no_grad()
    def step(state: tuple[AutoencoderKL, torch.Tensor]) -> torch.Tensor:
        autoencoder, latents = state
        return TiledDecoder(autoencoder, tile)(latents) if tile else autoencoder.decode_stage_2_outputs(latents)

    return estimate_peak_gib(setup, step, lambda s: [*s[0].parameters(), s[1]], warmup=False)


def decode_memory_rows(configs: Sequence[Configuration], tiles: Sequence[int | None]) -> list[dict[str, Any]]:
    """Estimated GPU GiB of whole and tiled decoding for each configuration, as loaded for sampling and with explicit attention."""
    rows = []
    for config in configs:
        for tile in tiles:
            row = {"size": config.name, "grid": config.image_size[0], "decode_tile": tile or "whole"}
            row["estimated_gpu_gib"] = decode_estimate_gib(config, tile)
            row["estimated_gpu_gib_explicit_attention"] = decode_estimate_gib(config, tile, as_loaded=False)
            rows.append(row)
    return rows
