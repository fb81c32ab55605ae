"""Sampling synthetic CTs: reverse diffusion in latent space, decoding, and writing NIfTI plus a preview.

Every sample has its own seed (`seed + index`) and its own random generator, so a sample is the
same whatever the batch size or the number of samples asked for.
"""

from __future__ import annotations

import json
import logging
from functools import partial
from pathlib import Path

import numpy as np
import torch
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler, Scheduler
from tqdm import tqdm

from scripts.adherence import tumour_adherence
from scripts.controlnet import ControlledUNet
from scripts.dicom_export import export_dicom
from scripts.preview import save_preview
from scripts.volumes import centred_affine, check_writable, to_hu, write_nifti

logger = logging.getLogger(__name__)

SCHEDULERS = {"ddpm": DDPMScheduler, "ddim": DDIMScheduler}


def make_scheduler(sampler: str, noise_schedule: dict, num_inference_steps: int) -> Scheduler:
    """The scheduler `sampler` on the noise schedule the model was trained with, set to `num_inference_steps`."""
    if sampler not in SCHEDULERS:
        raise ValueError(f"sampler must be one of {sorted(SCHEDULERS)}, got {sampler!r}")
    train_steps = int(noise_schedule["num_train_timesteps"])
    if not 1 <= int(num_inference_steps) <= train_steps:
        raise ValueError(f"num_inference_steps must be between 1 and {train_steps}, got {num_inference_steps}")
    scheduler = SCHEDULERS[sampler](**noise_schedule)
    scheduler.set_timesteps(int(num_inference_steps))
    return scheduler


@torch.no_grad()
def denoise(
    unet: torch.nn.Module, scheduler: Scheduler, noise: torch.Tensor, generators: list[torch.Generator], progress: bool = True
) -> torch.Tensor:
    """Run the reverse process from `noise`; sample j draws its step noise from `generators[j]`."""
    latents = noise
    for t in tqdm(scheduler.timesteps, desc="denoising", unit="step", disable=not progress):
        timesteps = torch.full((latents.shape[0],), int(t), device=latents.device, dtype=torch.long)
        eps = unet(latents, timesteps=timesteps)
        latents = torch.cat(
            [scheduler.step(eps[j : j + 1], int(t), latents[j : j + 1], generator=g)[0] for j, g in enumerate(generators)]
        )
    return latents


class LatentDiffusionSampler:
    """Generates CT volumes in HU from a trained autoencoder and diffusion U-Net, optionally steered by a ControlNet.

    Args:
        autoencoder: the frozen AutoencoderKL.
        unet: the frozen DiffusionModelUNet.
        record: the diffusion checkpoint's record (scale factor, latent shape, schedule, grid, HU window).
        sampler: `ddim` (fast, the default) or `ddpm` (the thesis' 1000-step sampler).
        num_inference_steps: reverse steps; DDPM uses as many as it was trained with.
        device: where to sample.
        controlnet: the frozen tumour ControlNet, for conditioned sampling.
    """

    def __init__(
        self,
        autoencoder: torch.nn.Module,
        unet: torch.nn.Module,
        record: dict,
        sampler: str = "ddim",
        num_inference_steps: int = 50,
        device: torch.device | str = "cpu",
        controlnet: torch.nn.Module | None = None,
    ) -> None:
        if sampler == "ddpm" and num_inference_steps != record["noise_schedule"]["num_train_timesteps"]:
            logger.info("ddpm samples with all %d training steps", record["noise_schedule"]["num_train_timesteps"])
            num_inference_steps = record["noise_schedule"]["num_train_timesteps"]
        self.scheduler = make_scheduler(sampler, record["noise_schedule"], num_inference_steps)
        self.autoencoder, self.unet, self.record, self.device = autoencoder, unet, record, torch.device(device)
        self.controlled = ControlledUNet(unet, controlnet) if controlnet is not None else None

    def with_schedule(self, sampler: str, num_inference_steps: int) -> LatentDiffusionSampler:
        """Another sampler on the same loaded networks, with its own scheduler (for per-request settings)."""
        controlnet = self.controlled.controlnet if self.controlled is not None else None
        return LatentDiffusionSampler(self.autoencoder, self.unet, self.record, sampler, num_inference_steps, self.device, controlnet)

    @property
    def spacing(self) -> list[float]:
        return list(self.record["image_spacing_mm"])

    def _generator(self, seed: int) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(int(seed))

    @torch.no_grad()
    def sample(self, seeds: list[int], condition: torch.Tensor | None = None) -> list[np.ndarray]:
        """One HU volume (int16, RAS) per seed, generated as one batch; `condition` is a (tumour, lungs) mask."""
        generators = [self._generator(s) for s in seeds]
        shape = tuple(self.record["latent_shape"])
        noise = torch.cat([torch.randn((1, *shape), generator=g, device=self.device) for g in generators])
        predictor = self.unet
        if condition is not None:
            if self.controlled is None:
                raise ValueError("conditioned sampling needs a ControlNet")
            context = condition[None].to(self.device).expand(len(seeds), *condition.shape)
            predictor = partial(self.controlled, context=context)
        return self.decode(denoise(predictor, self.scheduler, noise, generators))

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> list[np.ndarray]:
        """HU volumes from scaled latents: undo the training scale factor, then decode."""
        images = self.autoencoder.decode_stage_2_outputs(latents / self.record["scale_factor"])
        return [to_hu(image[0], self.record["hu_window"]) for image in images]


def tumour_condition(mask: np.ndarray) -> torch.Tensor:
    """The ControlNet's conditioning mask for a tumour alone: (tumour, no lungs), as the lung dropout trained it."""
    tumour = torch.as_tensor(mask > 0, dtype=torch.float32)
    return torch.stack([tumour, torch.zeros_like(tumour)])


def sample_seeds(seed: int, num_samples: int) -> list[int]:
    """The seeds of a request, one per sample: `seed, seed + 1, ...`."""
    if int(num_samples) < 1:
        raise ValueError(f"num_samples must be at least 1, got {num_samples}")
    return [int(seed) + i for i in range(int(num_samples))]


def write_samples(
    sampler: LatentDiffusionSampler,
    output_dir: str,
    seeds: list[int],
    batch_size: int = 1,
    overwrite: bool = False,
    mask: np.ndarray | None = None,
    affine: np.ndarray | None = None,
    dicom: bool = False,
) -> list[Path]:
    """Generate one CT per seed into `output_dir`.

    Each sample is `sample_seed<N>_ct.nii.gz` (HU, int16) with a PNG preview. With a tumour `mask`
    (on the working grid, placed by `affine`), sampling is conditioned on it and each sample also
    gets `_mask.nii.gz` and `_adherence.json`; the preview cuts through the tumour and outlines it.
    With `dicom`, each sample is also exported to `sample_seed<N>_dicom/` (CT series, RTSTRUCT, SEG).
    """
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    out = Path(output_dir)
    names = {s: f"sample_seed{s}" for s in seeds}
    suffixes = ["_ct.nii.gz"] + (["_mask.nii.gz", "_adherence.json"] if mask is not None else []) + (["_dicom"] if dicom else [])
    check_writable([out / f"{n}{x}" for n in names.values() for x in suffixes], overwrite)
    condition = tumour_condition(mask) if mask is not None else None
    written = []
    for start in tqdm(range(0, len(seeds), int(batch_size)), desc="samples", unit="batch"):
        batch = seeds[start : start + int(batch_size)]
        for s, hu in zip(batch, sampler.sample(batch, condition)):
            placed = affine if affine is not None else centred_affine(hu.shape, sampler.spacing)
            written.append(write_nifti(hu, placed, out / f"{names[s]}_ct.nii.gz"))
            save_preview(hu, sampler.spacing, out / f"{names[s]}.png", title=names[s], mask=mask)
            mask_path = None
            if mask is not None:
                mask_path = write_nifti(mask.astype(np.uint8), placed, out / f"{names[s]}_mask.nii.gz")
                report = tumour_adherence(hu, mask, sampler.spacing)
                (out / f"{names[s]}_adherence.json").write_text(json.dumps(report, indent=2) + "\n")
                if report["mask_in_lungs_fraction"] < 0.5:
                    inside = 100 * report["mask_in_lungs_fraction"]
                    logger.warning("%s: the tumour lies mostly outside the sample's lungs (%.0f%% inside)", names[s], inside)
            if dicom:
                mask_file = str(mask_path) if mask_path else None
                export_dicom(str(written[-1]), str(out / f"{names[s]}_dicom"), mask=mask_file, name=names[s])
    logger.info("wrote %d synthetic CTs to %s", len(written), out.resolve())
    return written
