"""Generation evaluation, as the thesis' section 6.2: 2.5D FID, diversity, MMD and a t-SNE of real versus synthetic CTs.

Every metric is given for all samples, for the samples the quality filter accepts (what the thesis
did by hand for its tables 6.3 and 6.4), and for one half of the reference set against the other
(real versus real), the floor a perfect generator would reach with as many volumes.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from monai.metrics import MultiScaleSSIMMetric, SSIMMetric

from scripts.evaluation.data import StackedImages
from scripts.evaluation.distances import fid_2p5d, mmd
from scripts.evaluation.diversity import diversity
from scripts.evaluation.embedding import scatter, tsne_2d
from scripts.evaluation.features import SliceFeatures
from scripts.evaluation.report import Section, markdown_table, write_json, write_report, write_table

logger = logging.getLogger(__name__)

#: Metrics of one row of the table, in order.
COLUMNS = (
    "fid_2p5d",
    "fid_sagittal",
    "fid_coronal",
    "fid_axial",
    "ssim_diversity",
    "ms_ssim_diversity",
    "diversity_pairs",
    "mmd",
)


def volume_features(feature_network: SliceFeatures, images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    """Slice features per axis of each volume of a batch (N, 1, X, Y, Z)."""
    return [feature_network(image) for image in images]


def set_metrics(
    synthetic: torch.Tensor,
    synthetic_features: Sequence[dict],
    real: torch.Tensor,
    real_features: Sequence[dict],
    ssim: SSIMMetric,
    ms_ssim: MultiScaleSSIMMetric,
    max_pairs: int,
    seed: int,
) -> dict[str, float | int | None]:
    """FID, diversity of the synthetic side and MMD for one row; None for a metric the set is too small for (fewer than two volumes)."""
    row: dict[str, float | int | None] = {"volumes": len(synthetic), **{c: None for c in COLUMNS}}
    if len(synthetic) >= 1:
        row.update(fid_2p5d(synthetic_features, real_features))
    if len(synthetic) >= 2:
        row.update(diversity(synthetic, ssim, ms_ssim, max_pairs, seed))
        if len(real) >= 2:
            row["mmd"] = mmd(synthetic, real, seed)
    return row


def halves(n: int, seed: int) -> tuple[list[int], list[int]]:
    """A seeded split of `n` indices into two halves, for the real-versus-real baseline."""
    order = np.random.default_rng(seed).permutation(n).tolist()
    return sorted(order[: n // 2]), sorted(order[n // 2 :])


def tsne_figure(
    real_features: Sequence[dict], synthetic_features: Sequence[dict], accepted: Sequence[bool], seed: int, path: Path
) -> Path:
    """t-SNE of per-volume feature vectors (all slices of all axes), real versus synthetic (figure 6.12)."""
    vectors = np.stack(
        [torch.cat([v.flatten() for v in f.values()]).numpy() for f in [*real_features, *synthetic_features]]
    )
    groups = ["real"] * len(real_features) + ["synthetic, accepted" if a else "synthetic, rejected" for a in accepted]
    return scatter(tsne_2d(vectors, seed), groups, groups, path, "Real versus synthetic CTs (t-SNE of 2.5D features)")


def ms_ssim_settings(ms_ssim: MultiScaleSSIMMetric) -> dict:
    """The MS-SSIM settings, for the report (MONAI's defaults need sides above 160 voxels)."""
    return {
        "kernel_size": list(ms_ssim.kernel_size),
        "kernel_sigma": list(ms_ssim.kernel_sigma),
        "weights": list(ms_ssim.weights),
    }


def evaluate_generation(
    feature_network: SliceFeatures,
    samples: StackedImages,
    reference: StackedImages,
    quality: Mapping[str, Mapping],
    output_dir: str,
    ssim: SSIMMetric,
    ms_ssim: MultiScaleSSIMMetric,
    max_diversity_pairs: int = 100,
    seed: int = 0,
) -> Path:
    """Write metrics.json, metrics.csv/.md, quality.json/.csv, tsne.png and report.md to `output_dir`.

    Args:
        feature_network: slice features (scripts.slice_features), named by its `name`.
        samples, reference: synthetic and preprocessed real volumes in [-1, 1], (N, 1, X, Y, Z) on one grid,
            with their names (the samples' file names are the keys of `quality`).
        quality: the quality filter's judgement of each sample (scripts.evaluation.quality.judge_files).
        ssim, ms_ssim: the diversity metrics with their settings.
    """
    (samples, sample_names), reference = samples, reference.images
    if len(reference) < 4:
        raise ValueError(
            f"the reference set needs at least four CTs (two per half of the baseline), got {len(reference)}"
        )
    missing = sorted(set(sample_names) - set(quality))
    if missing:
        raise ValueError(f"the quality judgement lacks samples {missing}")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    fake, real = volume_features(feature_network, samples), volume_features(feature_network, reference)
    accepted = [bool(quality[n]["accept"]) for n in sample_names]
    keep = [i for i, a in enumerate(accepted) if a]
    a, b = halves(len(reference), seed)
    args = (ssim, ms_ssim, max_diversity_pairs, seed)
    rows = {
        "all samples": set_metrics(samples, fake, reference, real, *args),
        "accepted samples": set_metrics(samples[keep], [fake[i] for i in keep], reference, real, *args),
        "real vs real": set_metrics(reference[a], [real[i] for i in a], reference[b], [real[i] for i in b], *args),
    }
    table = write_table([{"set": name, **row} for name, row in rows.items()], out, "metrics")
    quality_rows = [
        {"file": n, "accept": quality[n]["accept"], "reasons": "; ".join(quality[n]["reasons"])} for n in sample_names
    ]
    write_table(quality_rows, out, "quality")
    write_json(dict(quality), out / "quality.json")
    settings = {"ms_ssim": ms_ssim_settings(ms_ssim), "max_diversity_pairs": max_diversity_pairs, "seed": seed}
    metrics = {
        "feature_network": feature_network.name,
        **rows["all samples"],
        "accepted": rows["accepted samples"],
        "real_vs_real": rows["real vs real"],
        "reference_volumes": len(reference),
        "settings": settings,
    }
    write_json(metrics, out / "metrics.json")
    tsne_figure(real, fake, accepted, seed, out / "tsne.png")
    text = (
        f"Feature network for FID: {feature_network.name}. FID is computed per slicing axis and averaged (`fid_2p5d`). "
        "Diversity is the mean SSIM and MS-SSIM over pairs of volumes of a set (lower is more diverse); "
        f"MS-SSIM uses kernel {settings['ms_ssim']['kernel_size']}, sigma {settings['ms_ssim']['kernel_sigma']} and "
        f"{len(settings['ms_ssim']['weights'])} scales with weights {settings['ms_ssim']['weights']}, so that 32^3 to 128^3 grids work. "
        "MMD is MONAI's unbiased linear-kernel MMD per voxel, on equal-size draws of both sets. "
        "The real-vs-real row compares one half of the reference set with the other. "
        "FID grows as sets shrink (its covariances are estimated from fewer slices): compare rows of similar size.\n"
    )
    sections = [
        Section("Metrics", text, table),
        Section("Quality filter", f"{len(keep)} of {len(accepted)} samples accepted.\n", markdown_table(quality_rows)),
        Section("Real versus synthetic", figures=[("t-SNE of real and synthetic CTs", "tsne.png")]),
    ]
    report = write_report(out, "Generation evaluation", sections)
    logger.info("generation evaluation written to %s", report)
    return report
