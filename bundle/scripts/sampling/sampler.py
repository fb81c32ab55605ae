"""Sampling synthetic CTs: reverse diffusion in latent space, decoding, and writing NIfTI plus a preview.

Every sample has its own seed (`seed + index`) and its own random generator, so a sample is the
same whatever the batch size or the number of samples asked for.

Speed and memory options: `rflow` sampling for models trained with rectified flow (see
`scripts.networks.schedules`), autocast to bfloat16/float16 (`precision`; it pays off on CUDA), tiled
decoding (`decode_tile`, see `scripts.networks.tiling`, for grids whose whole decoding does not fit
the GPU) and `torch.compile` of the denoiser (`compile`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from functools import partial

import numpy as np
import torch
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler, RFlowScheduler, Scheduler
from tqdm import tqdm

from scripts.data.volumes import to_hu
from scripts.networks.controlnet import ControlledUNet
from scripts.networks.schedules import AUTO_SAMPLER, check_sampler, resolve_sampling, trained_schedule
from scripts.networks.tile_plan import AUTO, planned_tile
from scripts.networks.tiling import TiledDecoder, TiledEncoder
from scripts.sampling.guidance import TumorGuidance, check_guidance_scale

logger = logging.getLogger(__name__)

SCHEDULERS = {"ddpm": DDPMScheduler, "ddim": DDIMScheduler, "rflow": RFlowScheduler}

#: Autocast dtypes by `precision`; float32 runs without autocast.
PRECISIONS = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}


def make_scheduler(
    sampler: str,
    noise_schedule: dict,
    num_inference_steps: int,
    schedule_type: str = "ddpm",
    latent_numel: int | None = None,
) -> Scheduler:
    """The scheduler `sampler` on the noise schedule the model was trained with (`schedule_type`), set to `num_inference_steps`.

    `latent_numel` (voxels of one latent channel) feeds RFlow's resolution-dependent timestep shift, when its schedule uses it.
    """
    if sampler not in SCHEDULERS:
        raise ValueError(f"sampler must be one of {sorted(SCHEDULERS)}, got {sampler!r}")
    check_sampler(sampler, schedule_type)
    train_steps = int(noise_schedule["num_train_timesteps"])
    if not 1 <= int(num_inference_steps) <= train_steps:
        raise ValueError(f"num_inference_steps must be between 1 and {train_steps}, got {num_inference_steps}")
    scheduler = SCHEDULERS[sampler](**noise_schedule)
    if isinstance(scheduler, RFlowScheduler):
        scheduler.set_timesteps(int(num_inference_steps), input_img_size_numel=latent_numel)
    else:
        scheduler.set_timesteps(int(num_inference_steps))
    return scheduler


def check_precision(precision: str) -> None:
    """Refuse an unknown `precision`, naming the known ones."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")


def autocast(device: torch.device, precision: str) -> AbstractContextManager:
    """Autocast to `precision` on `device` (no autocast for float32)."""
    check_precision(precision)
    dtype = PRECISIONS[precision]
    return nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def scheduler_step(
    scheduler: Scheduler,
    prediction: torch.Tensor,
    t: float,
    next_t: float,
    latents: torch.Tensor,
    generators: list[torch.Generator],
) -> torch.Tensor:
    """One reverse step of a batch: RFlow moves all samples along the velocity to `next_t`; DDPM/DDIM step each sample with its generator."""
    prediction = prediction.to(latents.dtype)
    if isinstance(scheduler, RFlowScheduler):
        return scheduler.step(prediction, t, latents, next_t)[0]
    return torch.cat(
        [
            scheduler.step(prediction[j : j + 1], int(t), latents[j : j + 1], generator=g)[0]
            for j, g in enumerate(generators)
        ]
    )


@torch.no_grad()
def denoise(
    unet: Callable[..., torch.Tensor],
    scheduler: Scheduler,
    noise: torch.Tensor,
    generators: list[torch.Generator],
    progress: bool = True,
) -> torch.Tensor:
    """Run the reverse process from `noise` down to timestep 0; sample j draws its step noise from `generators[j]`."""
    latents = noise
    times = scheduler.timesteps.tolist()
    dtype = torch.float32 if scheduler.timesteps.is_floating_point() else torch.long
    for t, next_t in tqdm(
        zip(times, [*times[1:], 0]), total=len(times), desc="denoising", unit="step", disable=not progress
    ):
        batch_t = torch.full((latents.shape[0],), t, device=latents.device, dtype=dtype)
        latents = scheduler_step(scheduler, unet(latents, timesteps=batch_t), t, next_t, latents, generators)
    return latents


class LatentDiffusionSampler:
    """Generates CT volumes in HU from a trained autoencoder and diffusion U-Net, optionally steered by a ControlNet.

    Args:
        autoencoder: the frozen AutoencoderKL.
        unet: the frozen DiffusionModelUNet.
        record: the diffusion checkpoint's record (scale factor, latent shape, schedule, grid, HU window).
        sampler: `auto` (the default: the fast sampler of the model's schedule), `ddim` (fast) or `ddpm` (the
            thesis' 1000-step sampler) for DDPM-trained models; `rflow` for models trained with rectified flow
            (configs/rflow.json).
        num_inference_steps: reverse steps (None: the sampler's default, DDIM 25, RFlow 10); DDPM uses as many as it
            was trained with.
        device: where to sample.
        controlnet: the frozen tumor ControlNet, for conditioned sampling.
        precision: `float32`, or `bfloat16`/`float16` autocast of the networks (faster on CUDA GPUs).
        decode_tile: decode in tiles of this many latent voxels per side, to bound memory (same result up to
            rounding); None decodes whole; "auto" tiles only when the whole batch would not fit in free memory.
        compile: `torch.compile` the denoiser (pays off for long runs on a GPU; the first sample pays the compilation).
        guidance_scale: classifier-free tumor guidance of conditioned sampling (`scripts.sampling.guidance`): 1 is
            plain conditioning; larger scales push away from the tumor-removed chest, at twice the cost per step.
    """

    def __init__(
        self,
        autoencoder: torch.nn.Module,
        unet: torch.nn.Module,
        record: dict,
        sampler: str = AUTO_SAMPLER,
        num_inference_steps: int | None = None,
        device: torch.device | str = "cpu",
        controlnet: torch.nn.Module | None = None,
        precision: str = "float32",
        decode_tile: int | Sequence[int] | str | None = AUTO,
        compile: bool = False,
        guidance_scale: float = 1.0,
    ) -> None:
        asked = num_inference_steps
        sampler, num_inference_steps = resolve_sampling(record, sampler, num_inference_steps)
        if sampler == "ddpm" and asked not in (None, num_inference_steps):
            logger.info("ddpm samples with all %d training steps", num_inference_steps)
        latent_numel = int(np.prod(record["latent_shape"][1:]))
        self.scheduler = make_scheduler(
            sampler, record["noise_schedule"], num_inference_steps, trained_schedule(record), latent_numel
        )
        self.autoencoder, self.unet, self.record, self.device = autoencoder, unet, record, torch.device(device)
        self.sampler_name, self.num_inference_steps = sampler, num_inference_steps
        self.controlnet = controlnet
        self.options = {
            "precision": precision,
            "decode_tile": decode_tile,
            "compile": compile,
            "guidance_scale": guidance_scale,
        }
        check_precision(precision)
        check_guidance_scale(guidance_scale)
        if decode_tile not in (None, AUTO):
            TiledDecoder(autoencoder, decode_tile)  # refuses a bad tile or a decoder tiles cannot split, at start-up
        self.denoiser = torch.compile(unet) if compile else unet
        controlled = ControlledUNet(unet, controlnet) if controlnet is not None else None
        if controlled is not None and guidance_scale != 1.0:
            controlled = TumorGuidance(controlled, guidance_scale)
        self.controlled = torch.compile(controlled) if compile and controlled is not None else controlled

    def with_schedule(
        self, sampler: str = AUTO_SAMPLER, num_inference_steps: int | None = None
    ) -> LatentDiffusionSampler:
        """Another sampler on the same loaded networks and options, with its own scheduler (for per-request settings)."""
        return LatentDiffusionSampler(
            self.autoencoder,
            self.unet,
            self.record,
            sampler,
            num_inference_steps,
            self.device,
            self.controlnet,
            **self.options,
        )

    @property
    def spacing(self) -> list[float]:
        return list(self.record["image_spacing_mm"])

    def generator(self, seed: int) -> torch.Generator:
        """The random generator of the sample with `seed`, on the sampling device."""
        return torch.Generator(device=self.device).manual_seed(int(seed))

    @torch.no_grad()
    def sample(self, seeds: list[int], condition: torch.Tensor | None = None) -> list[np.ndarray]:
        """One HU volume (int16, RAS) per seed, generated as one batch; `condition` is a (tumor, lungs) mask."""
        generators = [self.generator(s) for s in seeds]
        shape = tuple(self.record["latent_shape"])
        noise = torch.cat([torch.randn((1, *shape), generator=g, device=self.device) for g in generators])
        predictor = self.denoiser
        if condition is not None:
            if self.controlled is None:
                raise ValueError("conditioned sampling needs a ControlNet")
            context = condition[None].to(self.device).expand(len(seeds), *condition.shape)
            predictor = partial(self.controlled, context=context)
        with autocast(self.device, self.options["precision"]):
            latents = denoise(predictor, self.scheduler, noise, generators)
        return self.decode(latents)

    @torch.no_grad()
    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """The scaled latent (1, C, ...) of one working-grid volume (C, X, Y, Z) in network intensities: its posterior
        mean times the training scale factor, what the diffusion model denoises towards (tiled when it would not fit)."""
        images = torch.as_tensor(image, dtype=torch.float32)[None].to(self.device)
        tile = planned_tile(AUTO, self.autoencoder, images.shape[:1] + images.shape[2:], self.device)
        z_mu = TiledEncoder(self.autoencoder, tile)(images)[0] if tile else self.autoencoder.encode(images)[0]
        return z_mu * self.record["scale_factor"]

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> list[np.ndarray]:
        """HU volumes from scaled latents: undo the training scale factor, then decode (whole, or in tiles)."""
        z = latents / self.record["scale_factor"]
        dtype = PRECISIONS[self.options["precision"]] or torch.float32
        shape = (len(z), *self.record["image_size"])
        tile = planned_tile(self.options["decode_tile"], self.autoencoder, shape, self.device, dtype)
        with autocast(self.device, self.options["precision"]):
            images = TiledDecoder(self.autoencoder, tile)(z) if tile else self.autoencoder.decode_stage_2_outputs(z)
        return [to_hu(image[0].float(), self.record["hu_window"]) for image in images]
