"""Sampling benchmark: seconds per volume and 2.5D FID of each sampler, and the cost of the speed options.

With trained weights (the demo weights by default) every sampler generates the same seeds; each
volume is timed from noise to HU, written as NIfTI and scored with the bundle's own generation
evaluation (configs/evaluate_generation.json: its sample loading, reference preprocessing and
feature network, and `scripts.evaluation.distances.fid_2p5d`) against a held-out phantom reference. The
real-versus-real FID of the reference's two halves is the floor. Without trained weights (the
thesis size) a volume's time is predicted from a timed U-Net step and a timed decode.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from configurations import Configuration
from measure import PeakMemory, timed
from monai.bundle import ConfigParser

from scripts.bundle_config import load_bundle_config
from scripts.data.volumes import centred_affine, write_nifti
from scripts.evaluation.distances import fid_2p5d
from scripts.evaluation.features import SliceFeatures
from scripts.evaluation.generation import halves, volume_features
from scripts.networks.loading import AUTOENCODER_FILE, DIFFUSION_FILE, load_autoencoder, load_diffusion
from scripts.networks.schedules import resolve_sampling, trained_schedule
from scripts.phantoms.thorax import write_phantoms
from scripts.sampling.sampler import LatentDiffusionSampler


def parse_sampler(spec: str) -> tuple[str, int]:
    """`ddim-25` -> ("ddim", 25); the error names --samplers."""
    name, _, steps = spec.partition("-")
    if not steps.isdigit():
        raise ValueError(f"--samplers entries look like ddim-25 or rflow-30, got {spec!r}")
    return name, int(steps)


def default_sampler(record: dict) -> str:
    """The sampler and step count configs/inference.json picks by default for the model of `record`, as a spec."""
    parser = load_bundle_config(["inference.json"])
    name, steps = resolve_sampling(record, parser["sampler"], parser["num_inference_steps"])
    return f"{name}-{steps}"


@dataclass
class TrainedModel:
    """Trained networks to sample: the autoencoder, and a diffusion U-Net with its record per training schedule."""

    autoencoder: torch.nn.Module
    diffusions: dict[str, tuple[torch.nn.Module, dict]]
    autoencoder_path: Path
    schedule: str

    @classmethod
    def load(cls, model_dir: Path, other_diffusion: Path | None, device: torch.device) -> TrainedModel:
        """The weights of `model_dir`, plus a U-Net trained with the other schedule over the same autoencoder if given."""
        own = load_diffusion(model_dir / DIFFUSION_FILE, device)
        schedule = trained_schedule(own.record)
        diffusions = {schedule: own}
        if other_diffusion is not None:
            other = load_diffusion(other_diffusion, device)
            if trained_schedule(other.record) == schedule:
                raise ValueError(
                    f"--other-diffusion {other_diffusion} is trained with the {schedule!r} schedule, as {model_dir} is: "
                    "give one trained with the other schedule"
                )
            if other.record["latent_shape"] != own.record["latent_shape"]:
                raise ValueError(
                    f"--other-diffusion {other_diffusion} has another latent shape than {model_dir}: train it on the same autoencoder"
                )
            diffusions[trained_schedule(other.record)] = other
        return cls(
            load_autoencoder(model_dir / AUTOENCODER_FILE, device), diffusions, model_dir / AUTOENCODER_FILE, schedule
        )

    @property
    def record(self) -> dict:
        """The record of `model_dir`'s own diffusion U-Net."""
        return self.diffusions[self.schedule][1]

    def sampler(self, spec: str, device: torch.device, **options: Any) -> LatentDiffusionSampler:
        """A sampler for `spec` on the U-Net trained with the schedule it needs."""
        name, steps = parse_sampler(spec)
        schedule = "rflow" if name == "rflow" else "ddpm"
        unet, record = self.diffusions[schedule]
        return LatentDiffusionSampler(self.autoencoder, unet, record, name, steps, device, **options)


def reference_dir(given: Path | None, work_dir: Path, cases: int) -> Path:
    """The reference CT folder: `given`, else `cases` held-out phantoms (seed 1; the demo weights were trained on seed 0)."""
    if given is not None:
        return given
    write_phantoms(str(work_dir / "reference"), n=cases, size=128, seed=1, val_fraction=0.0, test_fraction=0.0)
    return work_dir / "reference"


def evaluation_parser(
    model: TrainedModel, reference: Path, work_dir: Path, grid: int, device: torch.device, feature_weights: Path | None
) -> ConfigParser:
    """configs/evaluate_generation.json set up for this benchmark: the reference, the model's feature network, the grid."""
    overrides = {
        "reference_dir": str(reference),
        "cache_dir": str(work_dir / "cache"),
        "autoencoder_path": str(model.autoencoder_path),
        "feature_weights_path": str(feature_weights) if feature_weights else None,
        "grid_size": grid,
        "device": f"$torch.device('{device}')",
    }
    return load_bundle_config(["evaluate_generation.json"], overrides)


def generate(sampler: LatentDiffusionSampler, seeds: Sequence[int], folder: Path, batch_size: int) -> list[float]:
    """Sample `seeds` in batches into `folder` as NIfTI; seconds per volume of each batch (noise to HU, writing excluded)."""
    seconds = []
    for start in range(0, len(seeds), batch_size):
        batch = list(seeds[start : start + batch_size])
        volumes, elapsed = timed(lambda: sampler.sample(batch), sampler.device)
        seconds += [elapsed / len(batch)] * len(batch)
        for seed, hu in zip(batch, volumes):
            write_nifti(hu, centred_affine(hu.shape, sampler.spacing), folder / f"sample_seed{seed}_ct.nii.gz")
    return seconds


def fid_of(parser: ConfigParser, features: SliceFeatures, samples: Path, reference_features: list[dict]) -> float:
    """2.5D FID of the samples in `samples` against the reference features."""
    parser["samples_dir"] = str(samples)
    images, _ = parser.get_parsed_content("sample_batch", lazy=False)
    return fid_2p5d(volume_features(features, images), reference_features)["fid_2p5d"]


def trained_sampler_rows(
    model: TrainedModel,
    specs: Sequence[str],
    parser: ConfigParser,
    seeds: Sequence[int],
    work_dir: Path,
    device: torch.device,
) -> list[dict[str, Any]]:
    """For each sampler: seconds per volume, peak memory, FID against the reference, and the real-vs-real floor."""
    features = parser.get_parsed_content("feature_network")
    reference, _ = parser.get_parsed_content("reference_batch")
    reference_features = volume_features(features, reference)
    a, b = halves(len(reference), 0)
    rows = [
        {
            "sampler": "real vs real (reference halves)",
            "fid_2p5d": fid_2p5d([reference_features[i] for i in a], [reference_features[i] for i in b])["fid_2p5d"],
        }
    ]
    for spec in specs:
        name, _ = parse_sampler(spec)
        if ("rflow" if name == "rflow" else "ddpm") not in model.diffusions:
            continue
        sampler = model.sampler(spec, device)
        folder = work_dir / "samples" / spec
        with PeakMemory(device) as memory:
            seconds = generate(sampler, seeds, folder, 1)
        row = {
            "sampler": spec,
            "steps": len(sampler.scheduler.timesteps),
            "volumes": len(seeds),
            "seconds_per_volume": float(np.mean(seconds)),
        }
        rows.append(
            {**row, "peak_gib": memory.peak_gib, "fid_2p5d": fid_of(parser, features, folder, reference_features)}
        )
    return with_speedups(rows)


def with_speedups(rows: list[dict[str, Any]], key: str = "seconds_per_volume") -> list[dict[str, Any]]:
    """Add to each row with a `key` time its speed-up over the slowest such row (DDPM-1000 when it was run)."""
    slowest = max((r[key] for r in rows if key in r), default=None)
    return [{**r, "speedup": slowest / r[key]} if key in r else r for r in rows]


def variant_rows(
    model: TrainedModel, spec: str, variants: Sequence[dict[str, Any]], device: torch.device
) -> list[dict[str, Any]]:
    """The default sampler with speed options (precision, tiled decoding, torch.compile, batch size): seconds per volume
    (first call, which pays any compilation, and the next), and the largest HU difference from plain float32 volumes of the same seeds."""
    seeds = list(range(max(int(v.get("batch_size", 1)) for v in variants)))
    plain = model.sampler(spec, device)
    baseline = [plain.sample([s])[0].astype(np.int32) for s in seeds]
    rows = []
    for variant in variants:
        options = {k: v for k, v in variant.items() if k != "batch_size"}
        batch = int(variant.get("batch_size", 1))
        sampler = model.sampler(spec, device, **options)
        _, first_seconds = timed(lambda: sampler.sample(seeds[:batch]), device)
        volumes, seconds = timed(lambda: sampler.sample(seeds[:batch]), device)
        difference = max(int(np.abs(v.astype(np.int32) - baseline[i]).max()) for i, v in enumerate(volumes))
        rows.append(
            {
                "sampler": spec,
                **variant,
                "first_call_seconds": first_seconds / batch,
                "seconds_per_volume": seconds / batch,
                "max_abs_hu_difference": difference,
            }
        )
    return rows


def predicted_rows(config: Configuration, specs: Sequence[str], seconds: dict[str, float]) -> list[dict[str, Any]]:
    """Seconds per volume predicted as steps x (one timed U-Net step) + one timed decode, for untrained networks of `config`."""
    rows = []
    for spec in specs:
        name, steps = parse_sampler(spec)
        steps = int(config.record()["noise_schedule"]["num_train_timesteps"]) if name == "ddpm" else steps
        rows.append(
            {
                "size": config.name,
                "grid": config.grid,
                "sampler": spec,
                "steps": steps,
                "predicted_seconds_per_volume": steps * seconds["unet_step"] + seconds["decode"],
            }
        )
    return with_speedups(rows, "predicted_seconds_per_volume")
