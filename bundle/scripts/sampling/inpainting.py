"""Latent inpainting: denoise part of a latent while the rest is held to a known latent (blended diffusion, RePaint).

At every reverse step the known part of the latent is replaced by the known latent noised to that step's level, so
the model only invents the free part and sees the known part as context. With `resample_steps` > 1 (RePaint,
Lugmayr et al. 2022), each step is undone (noised back one step) and redone that many times, which lets the free part
agree better with the known part; 1 is plain blended latent diffusion.

Both use the forward path `x_t = alpha_t * x_0 + sigma_t * noise` of the model's noise schedule: DDPM/DDIM's
`alpha_t = sqrt(alphas_cumprod[t])`, `sigma_t = sqrt(1 - alphas_cumprod[t])`; rectified flow's `alpha_t = 1 - t/T`,
`sigma_t = t/T`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from monai.networks.schedulers import RFlowScheduler, Scheduler
from tqdm import tqdm

from scripts.sampling.sampler import scheduler_step


def path_coefficients(scheduler: Scheduler, t: float) -> tuple[float, float]:
    """(alpha_t, sigma_t) of the forward path at timestep `t`; t = 0 is the clean latent (1, 0)."""
    if t <= 0:
        return 1.0, 0.0
    if isinstance(scheduler, RFlowScheduler):
        s = float(t) / scheduler.num_train_timesteps
        return 1.0 - s, s
    alpha_bar = float(scheduler.alphas_cumprod[int(t)])
    return math.sqrt(alpha_bar), math.sqrt(1.0 - alpha_bar)


def noised(x0: torch.Tensor, scheduler: Scheduler, t: float, generator: torch.Generator) -> torch.Tensor:
    """The clean latent `x0` taken to timestep `t` of the forward path with fresh noise."""
    alpha, sigma = path_coefficients(scheduler, t)
    return alpha * x0 + sigma * torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)


def renoised(x: torch.Tensor, scheduler: Scheduler, t_from: float, t_to: float, g: torch.Generator) -> torch.Tensor:
    """A latent at `t_from` taken forward to the noisier `t_to` (one forward transition of the path)."""
    alpha_from, sigma_from = path_coefficients(scheduler, t_from)
    alpha_to, sigma_to = path_coefficients(scheduler, t_to)
    ratio = alpha_to / alpha_from
    sigma = math.sqrt(max(sigma_to**2 - (ratio * sigma_from) ** 2, 0.0))
    return ratio * x + sigma * torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype)


@torch.no_grad()
def inpaint(
    predictor: Callable[..., torch.Tensor],
    scheduler: Scheduler,
    known: torch.Tensor,
    free: torch.Tensor,
    generator: torch.Generator,
    resample_steps: int = 1,
    progress: bool = True,
) -> torch.Tensor:
    """A latent equal to `known` where `free` is 0 and denoised from noise where it is 1 (one latent, batch of 1).

    Args:
        predictor: the model's prediction, called as `predictor(x, timesteps=t)`.
        scheduler: the reverse process, set to its inference steps.
        known: the clean latent to keep, (1, C, X, Y, Z).
        free: 1 where the latent is generated, 0 where it is held to `known`; broadcastable to `known`.
        generator: the request's random generator (start noise, step noise, the known part's noise).
        resample_steps: RePaint's resampling per step; 1 is blended latent diffusion.
    """
    if int(resample_steps) < 1:
        raise ValueError(f"resample_steps must be at least 1, got {resample_steps}")
    free = free.to(known.dtype)
    times = scheduler.timesteps.tolist()
    dtype = torch.float32 if scheduler.timesteps.is_floating_point() else torch.long
    x = torch.randn(known.shape, generator=generator, device=known.device, dtype=known.dtype)
    for t, next_t in tqdm(
        zip(times, [*times[1:], 0]), total=len(times), desc="inpainting", unit="step", disable=not progress
    ):
        batch_t = torch.full((1,), t, device=known.device, dtype=dtype)
        for repeat in range(int(resample_steps)):
            x = free * x + (1 - free) * noised(known, scheduler, t, generator)
            x = scheduler_step(scheduler, predictor(x, timesteps=batch_t), t, next_t, x, [generator])
            if repeat < int(resample_steps) - 1:
                x = renoised(x, scheduler, next_t, t, generator)
    return free * x + (1 - free) * known
