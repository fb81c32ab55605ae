"""FLOPs of one U-Net step and one decode (torch's FlopCounterMode), their measured time, and the fraction of the device's peak.

The peak is measured, not taken from a datasheet: the best throughput of a large square matmul in
the same dtype. FLOPs are counted on the meta device (no arithmetic), so the thesis size costs nothing
to count; times come from the untrained networks of each configuration, which cost what trained ones do.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from configurations import Configuration
from measure import timed
from monai.networks.nets import AutoencoderKL, DiffusionModelUNet
from torch.utils.flop_counter import FlopCounterMode

from scripts.sampling.sampler import autocast


def count_flops(work: Callable[[], Any]) -> int:
    """Floating-point operations `work()` performs (a multiply-add counts two), as torch's flop counter sees them."""
    with FlopCounterMode(display=False) as counter:
        work()
    return int(counter.get_total_flops())


def matmul_peak_tflops(device: torch.device, dtype: torch.dtype = torch.float32, repeats: int = 5) -> float:
    """Best TFLOP/s of a large square matmul in `dtype` on `device` (8192 on a GPU, 2048 on a CPU): the peak achieved rates are compared with."""
    n = 8192 if device.type == "cuda" else 2048
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    torch.matmul(a, b)
    best = min(timed(lambda: torch.matmul(a, b), device)[1] for _ in range(repeats))
    return 2 * n**3 / best / 1e12


def unet_step_flops(config: Configuration, batch_size: int = 1) -> int:
    """FLOPs of one denoising U-Net call on a batch of latents."""
    with torch.device("meta"):
        unet = DiffusionModelUNet(**config.diffusion_kwargs)
        latents = torch.empty((batch_size, *config.latent_shape))
        return count_flops(lambda: unet(latents, timesteps=torch.zeros(batch_size, dtype=torch.long)))


def decode_flops(config: Configuration, batch_size: int = 1) -> int:
    """FLOPs of decoding a batch of latents to images."""
    with torch.device("meta"):
        autoencoder = AutoencoderKL(**config.autoencoder_kwargs)
        latents = torch.empty((batch_size, *config.latent_shape))
        return count_flops(lambda: autoencoder.decode_stage_2_outputs(latents))


@torch.no_grad()
def network_seconds(
    config: Configuration, device: torch.device, precision: str = "float32", repeats: int = 2
) -> dict[str, float]:
    """Best wall seconds of one U-Net step and of one decode (batch 1) of the untrained networks, after a warm-up call
    (one timed call when the warm-up took over 10 s, so that a CPU gets through the thesis decoder)."""
    autoencoder, unet = config.untrained(device)
    latents = torch.randn((1, *config.latent_shape), device=device)
    timesteps = torch.full((1,), 500, device=device, dtype=torch.long)
    seconds = {}
    with autocast(device, precision):
        for name, work in (
            ("unet_step", lambda: unet(latents, timesteps=timesteps)),
            ("decode", lambda: autoencoder.decode_stage_2_outputs(latents)),
        ):
            warmup = timed(work, device)[1]
            seconds[name] = min(timed(work, device)[1] for _ in range(1 if warmup > 10 else repeats))
    return seconds


def flops_rows(
    config: Configuration, seconds: dict[str, float], peak_tflops: float, precision: str
) -> list[dict[str, Any]]:
    """Per network call: GFLOP, measured seconds, achieved TFLOP/s and its fraction of the measured peak."""
    flops = {"unet_step": unet_step_flops(config), "decode": decode_flops(config)}
    rows = []
    for name, count in flops.items():
        achieved = count / seconds[name] / 1e12
        rows.append(
            {
                "size": config.name,
                "grid": config.grid,
                "call": name,
                "precision": precision,
                "gflop": count / 1e9,
                "seconds": seconds[name],
                "achieved_tflops": achieved,
                "fraction_of_peak": achieved / peak_tflops,
            }
        )
    return rows
