"""Memory and time budget of every stage at the high-resolution sizes: GPU peaks against the targets, FLOPs and seconds.

Per size and stage, the works the stage runs on the GPU:
- autoencoder: one VAE-GAN iteration on a batch of training patches (AMP and activation checkpointing as
  configured, discriminator on, perceptual loss off as shipped), and validation's reconstruction of a whole
  volume (AMP; the trainer's weights, gradients and Adam moments held), whole or in tiles;
- diffusion, controlnet: one noise-prediction iteration on a whole latent (the ControlNet with its 2-channel
  mask at image resolution), and the encoding of a training volume to its latent (float32, the stage's
  networks held), whole or in tiles;
- sampling, sampling with a tumor: one U-Net (or U-Net + ControlNet) step and the decoding of the latent,
  whole or in tiles, at inference.json's precision, the sampler's other networks held.
Each work is estimated on fake tensors (`memory_estimate`, no GPU needed), FLOPs included. Its seconds are
predicted from the FLOPs at the rates a GPU run of this benchmark measured (`reference_rates`), with that
device's matmul peak as a floor; given a device (by default on CUDA), each work also runs there for its
measured peak memory and seconds.
"""

from __future__ import annotations

import gc
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from configurations import SIZES, Configuration, configurations
from decoding import volume_work
from measure import GIB, PeakMemory, timed
from memory_estimate import Work, estimate, mixed_precision, trained_state
from monai.networks.nets import AutoencoderKL, DiffusionModelUNet, PatchDiscriminator
from training_speed import STAGES, configured_amp, training_work

from scripts.networks.controlnet import ControlledUNet, TumorControlNet
from scripts.networks.loading import INFERENCE_OPTIONS
from scripts.networks.schedules import resolve_sampling
from scripts.networks.tile_plan import whole_volume_bytes
from scripts.sampling.sampler import PRECISIONS
from scripts.transforms.conditioning import CONDITION_CHANNELS

#: Peak GPU GiB each phase must stay under: a 24 GB card for training, a 16 GB one for sampling.
TARGETS_GIB = {"training": 24.0, "sampling": 16.0}

#: Sampling stages, and whether they steer the U-Net with the ControlNet.
SAMPLING_STAGES = {"sampling": False, "sampling with tumor": True}


@dataclass
class Rates:
    """Achieved TFLOP/s per kind of work and matmul peak per precision, measured on `device` (read from `source`)."""

    device: str
    source: str
    tflops: dict[str, float]
    peak_tflops: dict[str, float]


@dataclass
class Item:
    """One work of a stage, the precision it runs at, the rate its seconds follow, and its tile (whole-volume works only)."""

    stage: str
    work_name: str
    work: Work
    precision: str
    rate: str
    tile: int | str | None = None


def precision_name(dtype: torch.dtype | None) -> str:
    """A dtype's name as the rates and the sampler spell it (None, no autocast, is float32)."""
    return "float32" if dtype is None else str(dtype).removeprefix("torch.")


def rate_family(precision: str) -> str:
    """The precision whose measured rate stands for `precision`: float32, or bfloat16 for any half precision."""
    return "float32" if precision == "float32" else "bfloat16"


def voxels(grid: int | str) -> int:
    """Voxels of a grid label: 128 (a cube, as older results spell it) or `512x512x128`."""
    return int(grid) ** 3 if isinstance(grid, int) else math.prod(int(n) for n in str(grid).split("x"))


def largest(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows on the largest grid among `rows`."""
    top = max((voxels(r["grid"]) for r in rows), default=0)
    return [r for r in rows if voxels(r["grid"]) == top]


def training_rates(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Per stage, the best TFLOP/s of the measured iterations on the largest grid: the FLOPs of that size's iteration
    (counted now, on the current configs, where they still build that grid) times the batch, over the seconds."""
    rates: dict[str, float] = {}
    for stage in STAGES:
        for row in largest([r for r in rows if r["stage"] == stage and "seconds_per_iteration" in r]):
            if row["size"] not in SIZES:
                continue
            (config,) = configurations([row["size"]], {})
            if voxels(config.grid) != voxels(row["grid"]):
                continue
            flops = estimate(training_work(config, stage, 1, True)).flops * row["batch"]
            rate = flops / row["seconds_per_iteration"] / 1e12
            rates[f"training {stage}"] = max(rates.get(f"training {stage}", 0.0), rate)
    return rates


def reference_rates(path: Path) -> Rates | None:
    """The rates in a GPU benchmark's JSON (its flops and training sections, largest grid), or None without that file."""
    if not path.is_file():
        return None
    results = json.loads(path.read_text())
    flops = results.get("flops", {})
    tflops = {f"{r['call']} {r['precision']}": r["achieved_tflops"] for r in largest(flops.get("rows", []))}
    tflops.update(training_rates(results.get("training", {}).get("rows", [])))
    return Rates(results["machine"]["device"], path.name, tflops, flops.get("peak_tflops", {}))


def network_weights(config: Configuration, controlnet: bool) -> Callable[[torch.device], list[torch.Tensor]]:
    """Builder of the weights the U-Net (and the ControlNet) keep on the device beside the autoencoder's work."""

    def build(device: torch.device) -> list[torch.Tensor]:
        with device:
            networks = [DiffusionModelUNet(**{**config.diffusion_kwargs, **INFERENCE_OPTIONS})]
            networks += [TumorControlNet(**config.controlnet_kwargs)] if controlnet else []
        return [p for n in networks for p in n.parameters()]

    return build


def autoencoder_trainer_state(config: Configuration) -> Callable[[torch.device], list[torch.Tensor]]:
    """Builder of what the autoencoder's trainer holds during validation besides the autoencoder's weights."""
    discriminator_kwargs = config.parser("train_autoencoder.json").get_parsed_content("discriminator_kwargs")

    def build(device: torch.device) -> list[torch.Tensor]:
        with device:
            autoencoder = AutoencoderKL(**config.autoencoder_kwargs)
            state = trained_state([autoencoder, PatchDiscriminator(**discriminator_kwargs)])
        own = {id(p) for p in autoencoder.parameters()}
        return [t for t in state if id(t) not in own]

    return build


def denoising_work(config: Configuration, dtype: torch.dtype | None, controlnet: bool) -> Work:
    """One sampling step of the U-Net (or of the U-Net steered by the ControlNet and a mask), the autoencoder held."""

    def setup(device: torch.device) -> dict[str, Any]:
        with device:
            unet = DiffusionModelUNet(**{**config.diffusion_kwargs, **INFERENCE_OPTIONS}).eval()
            network: torch.nn.Module = unet
            context = {}
            if controlnet:
                network = ControlledUNet(unet, TumorControlNet(**config.controlnet_kwargs).eval())
                context = {"context": torch.zeros((1, len(CONDITION_CHANNELS), *config.image_size))}
            autoencoder = AutoencoderKL(**{**config.autoencoder_kwargs, **INFERENCE_OPTIONS})
            latents = torch.randn((1, *config.latent_shape))
        return {"network": network, "autoencoder": autoencoder, "latents": latents, "context": context}

    @torch.no_grad()
    def step(s: dict[str, Any]) -> torch.Tensor:
        latents = s["latents"]
        timesteps = torch.full((1,), 500, dtype=torch.long, device=latents.device)
        with mixed_precision(dtype, latents.device.type):
            return s["network"](latents, timesteps=timesteps, **s["context"])

    def held(s: dict[str, Any]) -> list[torch.Tensor]:
        return [*s["network"].parameters(), *s["autoencoder"].parameters(), s["latents"], *s["context"].values()]

    return Work(setup, step, held, warmup=False)


def training_items(config: Configuration, tile: int) -> list[Item]:
    """Per training stage: one iteration (AMP as configured), and its whole-volume work whole and in tiles."""
    patch = "x".join(str(n) for n in config.patch_size)
    items = []
    for stage in STAGES:
        amp = configured_amp(config, stage)
        name = f"training iteration ({patch} patch)" if stage == "autoencoder" else "training iteration"
        precision = "float16" if amp else "float32"
        items.append(Item(stage, name, training_work(config, stage, 1, amp), precision, f"training {stage}"))
        for t in (None, tile):
            if stage == "autoencoder":
                dtype = torch.float16 if amp else None
                work = volume_work(config, "reconstruct", t, dtype, {}, autoencoder_trainer_state(config))
                name, precision = "validation reconstruction", precision_name(dtype)
            else:
                work = volume_work(config, "encode", t, None, {}, network_weights(config, stage == "controlnet"))
                name, precision = "latent encoding", "float32"
            items.append(Item(stage, name, work, precision, f"decode {rate_family(precision)}", t or "whole"))
    return items


def sampling_items(config: Configuration, tile: int) -> list[Item]:
    """Per sampling stage: one denoising step and the decoding, whole and in tiles, at inference.json's precision."""
    precision = config.parser("inference.json")["precision"]
    dtype = PRECISIONS[precision]
    items = []
    for stage, controlled in SAMPLING_STAGES.items():
        name = "U-Net + ControlNet step" if controlled else "U-Net step"
        rate = f"unet_step {rate_family(precision)}"
        items.append(Item(stage, name, denoising_work(config, dtype, controlled), precision, rate))
        for t in (None, tile):
            work = volume_work(config, "decode", t, dtype, None, network_weights(config, controlled))
            items.append(Item(stage, "decode", work, precision, f"decode {rate_family(precision)}", t or "whole"))
    return items


def predicted_seconds(flops: int, item: Item, rates: Rates | None) -> dict[str, float]:
    """Seconds of a work at the reference's measured rate for its kind, and at the reference's matmul peak (a floor)."""
    if rates is None:
        return {}
    seconds = {}
    if item.rate in rates.tflops:
        seconds["predicted_seconds"] = flops / rates.tflops[item.rate] / 1e12
    family = rate_family(item.precision)
    if family in rates.peak_tflops:
        seconds["seconds_at_peak"] = flops / rates.peak_tflops[family] / 1e12
    return seconds


def measured(work: Work, device: torch.device) -> dict[str, Any]:
    """Peak memory and seconds of one `work` step run on `device`, after a warm-up step."""
    state = work.setup(device)
    work.step(state)
    with PeakMemory(device) as memory:
        _, seconds = timed(lambda: work.step(state), device)
    return {"measured_gib": memory.peak_gib, "measured_seconds": seconds, "memory_kind": memory.kind}


def measured_or_skipped(work: Work, device: torch.device, estimated_gib: float, budget_gib: float) -> dict[str, Any]:
    """`measured(work, device)`, or why not: an estimate over `budget_gib`, or the device ran out of memory."""
    if estimated_gib > budget_gib:
        return {"skipped": f"estimate over the {budget_gib:.1f} GiB budget"}
    try:
        result = measured(work, device)
    except torch.cuda.OutOfMemoryError:
        result = {"skipped": "out of GPU memory"}
    # Outside the except block, so the traceback no longer holds the failed work's tensors.
    gc.collect()
    torch.cuda.empty_cache()
    return result


def budget_rows(
    config: Configuration, tile: int, rates: Rates | None, device: torch.device | None = None, budget_gib: float = 0.0
) -> list[dict[str, Any]]:
    """One row per work of every stage of `config`: estimated peak GiB, GFLOP, predicted seconds, measured ones on `device`."""
    rows = []
    for item in training_items(config, tile) + sampling_items(config, tile):
        peak_gib, flops = estimate(item.work)
        row = {"size": config.name, "grid": config.grid, "stage": item.stage, "work": item.work_name}
        row.update({"precision": item.precision, "tile": item.tile, "estimated_gib": peak_gib, "gflop": flops / 1e9})
        row.update(predicted_seconds(flops, item, rates))
        if device is not None:
            row.update(measured_or_skipped(item.work, device, peak_gib, budget_gib))
        rows.append({k: v for k, v in row.items() if v is not None})
    return rows


def auto_tiles(config: Configuration, stage: str, target_gib: float) -> bool:
    """Whether `encode_tile` / `decode_tile` "auto" tiles `stage`'s whole-volume work on a card of `target_gib`.

    `scripts.networks.tile_plan.planned_tile`'s rule (tile when its estimate passes half the free memory), with the
    whole card taken as free: a real card has less free, so it tiles at least there.
    """
    precision = config.parser("inference.json")["precision"] if stage in SAMPLING_STAGES else "float32"
    with torch.device("meta"):
        autoencoder = AutoencoderKL(**config.autoencoder_kwargs)
    needed = whole_volume_bytes(autoencoder, [1, *config.image_size], PRECISIONS[precision] or torch.float32)
    return needed > target_gib * GIB // 2


def stage_figures(
    step: dict[str, Any], volume: dict[str, Any], memory: str, seconds: str, steps: int
) -> tuple[float | None, float | None]:
    """A stage's peak GiB (its step or its whole-volume work) and seconds per iteration or per volume (steps x step + decode)."""
    peaks = (step.get(memory), volume.get(memory))
    peak = None if None in peaks else max(peaks)
    if step["stage"] not in SAMPLING_STAGES:
        return peak, step.get(seconds)
    times = (step.get(seconds), volume.get(seconds))
    return peak, None if None in times else steps * times[0] + times[1]


def summary_rows(config: Configuration, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per stage of `config`: the peak GiB with the whole-volume work whole, tiled and as "auto" picks on a card of
    the target's size, whether that meets the target, and the seconds; measured figures beside where there are any."""
    defaults = config.parser("inference.json")
    _, steps = resolve_sampling(config.record(), defaults["sampler"], defaults["num_inference_steps"])
    summary = []
    for stage in dict.fromkeys(r["stage"] for r in rows):
        step, whole, tiled = (
            next(r for r in rows if r["stage"] == stage and r.get("tile", "step") == t)
            for t in ("step", "whole", tile_of(rows))
        )
        target = TARGETS_GIB["sampling" if stage in SAMPLING_STAGES else "training"]
        tiles = auto_tiles(config, stage, target)
        row = {"size": config.name, "grid": config.grid, "stage": stage, "target_gib": target}
        row["auto_on_target_card"] = f"tiles of {tiled['tile']}" if tiles else "whole"
        for memory_prefix, seconds_prefix in (("estimated_", "predicted_"), ("measured_", "measured_")):
            memory, seconds = f"{memory_prefix}gib", f"{seconds_prefix}seconds"
            (peak_whole, seconds_whole), (peak_tiled, seconds_tiled) = (
                stage_figures(step, volume, memory, seconds, steps) for volume in (whole, tiled)
            )
            if memory_prefix == "measured_" and peak_whole is None and peak_tiled is None:
                continue
            default = peak_tiled if tiles else peak_whole
            row.update(
                {
                    f"{memory_prefix}peak_gib_whole": peak_whole,
                    f"{memory_prefix}peak_gib_tiled": peak_tiled,
                    f"{memory_prefix}meets_target": None if default is None else ("yes" if default <= target else "no"),
                    f"{seconds_prefix}seconds": seconds_whole,
                    f"{seconds_prefix}seconds_tiled": seconds_tiled if stage in SAMPLING_STAGES else None,
                }
            )
        row["seconds_per"] = f"volume ({steps} steps)" if stage in SAMPLING_STAGES else "iteration"
        summary.append(row)
    return summary


def tile_of(rows: list[dict[str, Any]]) -> int:
    """The tile of the tiled rows among `rows`."""
    return next(r["tile"] for r in rows if r.get("tile") not in (None, "whole"))
