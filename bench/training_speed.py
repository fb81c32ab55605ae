"""Training benchmark: seconds per iteration and peak memory of each stage, at batch size 1 and the largest that fits.

Each stage's trainer is the one its workflow builds (`train#trainer` of train_autoencoder.json,
train_diffusion.json, train_controlnet.json, with AMP as configured), fed a synthetic batch so
that only the networks are timed; the autoencoder is measured with its discriminator on (after
the adversarial warm-up) and without the optional perceptual loss. Beside the measured peak
(CUDA max allocated, or process RSS on the CPU) every row gives the memory of live tensors
estimated on fake tensors (`memory_estimate`), which also decides which batch sizes are worth trying.
"""

from __future__ import annotations

import gc
import tempfile
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Any

import torch
from configurations import Configuration
from ignite.engine import Events
from measure import PeakMemory, synchronize
from memory_estimate import Work, estimate, mixed_precision, state_tensors
from monai.engines import Trainer
from monai.networks.nets import AutoencoderKL, DiffusionModelUNet, PatchDiscriminator

from scripts.networks.controlnet import ControlledUNet, TumorControlNet
from scripts.training.losses import AutoencoderLoss
from scripts.transforms.conditioning import CONDITION_CHANNELS

STAGES = {
    "autoencoder": "train_autoencoder.json",
    "diffusion": "train_diffusion.json",
    "controlnet": "train_controlnet.json",
}

#: Config keys that cut the autoencoder's training memory, tried when its configuration as shipped does not fit.
MEMORY_SAVERS = {"autoencoder_use_checkpoint": True, "autoencoder_use_flash_attention": True}


class RepeatedBatch:
    """A data loader yielding one synthetic batch `length` times."""

    def __init__(self, batch: dict[str, torch.Tensor], length: int) -> None:
        self.batch, self.length = batch, length

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return (self.batch for _ in range(self.length))

    def __len__(self) -> int:
        return self.length


def synthetic_batch(config: Configuration, stage: str, batch_size: int) -> dict[str, torch.Tensor]:
    """A batch shaped as the stage's data: image patches in [-1, 1], or whole latents (with a tumor mask for the ControlNet)."""
    generator = torch.Generator().manual_seed(0)
    if stage == "autoencoder":  # the training crops (the whole grid without patch_size)
        return {"image": torch.rand((batch_size, 1, *config.patch_size), generator=generator) * 2 - 1}
    batch = {"image": torch.randn((batch_size, *config.latent_shape), generator=generator)}
    if stage == "controlnet":
        condition = torch.zeros((batch_size, len(CONDITION_CHANNELS), *config.image_size))
        centre = [s // 2 for s in config.image_size]
        condition[:, 0, centre[0] - 2 : centre[0] + 2, centre[1] - 2 : centre[1] + 2, centre[2] - 2 : centre[2] + 2] = (
            1.0
        )
        batch["condition"] = condition
    return batch


def stage_trainer(
    config: Configuration, stage: str, loader: RepeatedBatch, device: torch.device, folder: str
) -> Trainer:
    """The stage's trainer from its workflow config, on `loader`, without checkpoint, log or validation handlers."""
    parser = config.parser(STAGES[stage])
    parser.update(
        {
            "device": f"$torch.device('{device}')",
            "max_epochs": 1,
            "ckpt_dir": folder,
            "log_dir": folder,
            "adversarial_warmup_epochs": 0,
        }
    )
    parser["train#dataloader"] = loader
    parser["train#handlers"] = []
    if stage == "controlnet":  # instead of loading a trained diffusion checkpoint
        parser["unet"] = DiffusionModelUNet(**config.diffusion_kwargs).to(device).requires_grad_(False)
        parser["diffusion_record"] = config.record()
    return parser.get_parsed_content("train#trainer")


def measure_iterations(
    config: Configuration, stage: str, batch_size: int, iterations: int, device: torch.device
) -> dict[str, float]:
    """Seconds per iteration (after one warm-up iteration) and the measured peak memory of `iterations` + 1 iterations."""
    loader = RepeatedBatch(synthetic_batch(config, stage, batch_size), iterations + 1)
    with tempfile.TemporaryDirectory() as folder:
        trainer = stage_trainer(config, stage, loader, device, folder)
        ends: list[float] = []

        def iteration_end(_: Trainer) -> None:
            synchronize(device)
            ends.append(time.perf_counter())

        trainer.add_event_handler(Events.ITERATION_COMPLETED, iteration_end)
        with PeakMemory(device) as memory:
            trainer.run()
    seconds = (ends[-1] - ends[0]) / iterations
    return {
        "seconds_per_iteration": seconds,
        "peak_gib": memory.peak_gib,
        "before_gib": memory.before_gib,
        "memory_kind": memory.kind,
    }


def autoencoder_step_work(config: Configuration, batch_size: int, amp: bool, **network_options: Any) -> Work:
    """One VAE-GAN iteration (generator and discriminator updates) on a batch of training patches, with `network_options` for AutoencoderKL."""
    discriminator_kwargs = config.parser("train_autoencoder.json").get_parsed_content("discriminator_kwargs")

    def setup(device: torch.device) -> dict[str, Any]:
        with device:
            autoencoder = AutoencoderKL(**{**config.autoencoder_kwargs, **network_options})
            discriminator = PatchDiscriminator(**discriminator_kwargs)
        optimizers = [torch.optim.Adam(autoencoder.parameters()), torch.optim.Adam(discriminator.parameters())]
        images = synthetic_batch(config, "autoencoder", batch_size)["image"].to(device)
        return {
            "networks": [autoencoder, discriminator],
            "optimizers": optimizers,
            "images": images,
            "loss": AutoencoderLoss(),
        }

    def step(s: dict[str, Any]) -> None:
        (autoencoder, discriminator), (g_optimizer, d_optimizer), images = s["networks"], s["optimizers"], s["images"]
        with training_precision(amp, images.device):
            reconstruction, z_mu, z_sigma = autoencoder(images)
            terms = s["loss"].generator(images, reconstruction, z_mu, z_sigma, discriminator(reconstruction)[-1])
        _update(terms["total"], g_optimizer)
        with training_precision(amp, images.device):
            logits = discriminator(torch.cat([reconstruction.detach(), images]))[-1]
            d_loss = s["loss"].discriminator(*logits.split(len(images)))
        _update(d_loss, d_optimizer)

    return Work(setup, step, lambda s: [*state_tensors(s["networks"], s["optimizers"]), s["images"]])


def noise_step_work(config: Configuration, stage: str, batch_size: int, amp: bool) -> Work:
    """One noise-prediction iteration of the diffusion U-Net, or of the ControlNet on the frozen U-Net."""

    def setup(device: torch.device) -> dict[str, Any]:
        with device:
            unet = DiffusionModelUNet(**config.diffusion_kwargs)
            trained: torch.nn.Module = unet
            network: torch.nn.Module = unet
            if stage == "controlnet":
                unet.requires_grad_(False)
                trained = TumorControlNet(**config.controlnet_kwargs)
                network = ControlledUNet(unet, trained)
        batch = {k: v.to(device) for k, v in synthetic_batch(config, stage, batch_size).items()}
        return {
            "network": network,
            "trained": trained,
            "optimizer": torch.optim.Adam(trained.parameters()),
            "batch": batch,
        }

    def step(s: dict[str, Any]) -> None:
        images = s["batch"]["image"]
        noise = torch.randn_like(images)
        timesteps = torch.randint(0, 1000, (len(images),), device=images.device)
        condition = {"context": s["batch"]["condition"]} if stage == "controlnet" else {}
        with training_precision(amp, images.device):
            prediction = s["network"](images + noise, timesteps=timesteps, **condition)
        _update(torch.nn.functional.mse_loss(prediction.float(), noise), s["optimizer"])

    return Work(setup, step, lambda s: [*state_tensors([s["network"]], [s["optimizer"]]), *s["batch"].values()])


def training_precision(amp: bool, device: torch.device) -> AbstractContextManager:
    """The trainers' AMP (float16 autocast) on `device`, or nothing."""
    return mixed_precision(torch.float16 if amp else None, device.type)


def training_work(config: Configuration, stage: str, batch_size: int, amp: bool) -> Work:
    """One iteration of `stage` at `batch_size`, with or without AMP."""
    if stage == "autoencoder":
        return autoencoder_step_work(config, batch_size, amp)
    return noise_step_work(config, stage, batch_size, amp)


def configured_amp(config: Configuration, stage: str) -> bool:
    """Whether `stage`'s workflow config turns AMP on (the trainers use it on CUDA only)."""
    return bool(config.parser(STAGES[stage]).get_parsed_content("amp"))


def _update(loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
    """Backward and optimizer step."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def step_estimate(config: Configuration, stage: str, batch_size: int, device: torch.device) -> float:
    """Estimated GiB of live tensors in one iteration of `stage` on `device` (AMP as configured, on CUDA only, as the trainers do)."""
    amp = configured_amp(config, stage) and device.type == "cuda"
    return estimate(training_work(config, stage, batch_size, amp)).peak_gib


def batch_sizes(max_batch: int) -> list[int]:
    """1, 2, 4, ... up to `max_batch`."""
    sizes = [1]
    while sizes[-1] * 2 <= max_batch:
        sizes.append(sizes[-1] * 2)
    return sizes


def benchmark_stage(
    config: Configuration, stage: str, device: torch.device, iterations: int, max_batch: int, budget_gib: float
) -> list[dict[str, Any]]:
    """Rows for batch 1 and the largest batch that fits; an autoencoder that does not fit at batch 1 is tried again with MEMORY_SAVERS."""
    rows = batch_rows(config, stage, device, iterations, max_batch, budget_gib)
    if stage == "autoencoder" and not any("seconds_per_iteration" in r for r in rows):
        saving = Configuration(config.name, config.overlays, {**config.overrides, **MEMORY_SAVERS})
        rows += batch_rows(saving, stage, device, iterations, max_batch, budget_gib, settings=", ".join(MEMORY_SAVERS))
    return rows


def batch_rows(
    config: Configuration,
    stage: str,
    device: torch.device,
    iterations: int,
    max_batch: int,
    budget_gib: float,
    settings: str = "as configured",
) -> list[dict[str, Any]]:
    """Rows for batch 1 and the largest batch (up to `max_batch`) whose estimate fits `budget_gib` and that runs without running out of memory."""
    rows: list[dict[str, Any]] = []
    for batch in batch_sizes(max_batch):
        estimate = step_estimate(config, stage, batch, device)
        row = {
            "stage": stage,
            "size": config.name,
            "grid": config.grid,
            "settings": settings,
            "batch": batch,
            "estimated_gib": estimate,
        }
        if estimate > budget_gib:
            rows.append({**row, "skipped": f"estimate {estimate:.1f} GiB exceeds the {budget_gib:.1f} GiB budget"})
            break
        try:
            rows.append({**row, **measure_iterations(config, stage, batch, iterations, device)})
        except torch.cuda.OutOfMemoryError:
            rows.append({**row, "skipped": "out of GPU memory"})
        if "skipped" in rows[-1]:
            # Outside the except block, so the traceback no longer holds the failed trainer's tensors.
            gc.collect()
            torch.cuda.empty_cache()
            break
    measured = [r for r in rows if "seconds_per_iteration" in r]
    keep = measured[:1] + measured[-1:] if len(measured) > 1 else measured
    return keep + [r for r in rows if "skipped" in r]


def autoencoder_memory_options(config: Configuration, batch_size: int = 1) -> list[dict[str, Any]]:
    """Estimated GPU GiB of an autoencoder iteration with and without AMP, activation checkpointing and flash attention."""
    rows = []
    for amp in (False, True):
        for checkpoint in (False, True):
            for flash in (False, True):
                work = autoencoder_step_work(
                    config, batch_size, amp, use_checkpoint=checkpoint, use_flash_attention=flash
                )
                rows.append(
                    {
                        "size": config.name,
                        "batch": batch_size,
                        "amp": amp,
                        "use_checkpoint": checkpoint,
                        "use_flash_attention": flash,
                        "estimated_gpu_gib": estimate(work).peak_gib,
                    }
                )
    return rows
