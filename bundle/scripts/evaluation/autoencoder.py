"""Autoencoder evaluation, as the thesis' section 6.1: reconstruction metrics on train and test, figures, latent space.

Reconstructions are deterministic (the decoded posterior mean). MSE is in HU^2 and PSNR uses the
HU window's width as peak, so PSNR = 10 log10(width^2 / MSE) per case; SSIM is 3D on the windowed
volumes; KL is summed over latent voxels (the training loss term); the perceptual loss is the
training one (2.5D ResNet-50) and needs local weights.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from monai.data import Dataset
from monai.metrics import MSEMetric, PSNRMetric, SSIMMetric

from scripts.data.volumes import to_hu
from scripts.evaluation.data import case_name
from scripts.evaluation.embedding import kmeans_clusters, scatter, tsne_2d
from scripts.evaluation.figures import save_reconstruction, save_strip
from scripts.evaluation.report import Section, write_json, write_report, write_table
from scripts.networks.checkpoint import load_checkpoint
from scripts.networks.tile_plan import AUTO, planned_tile
from scripts.networks.tiling import TiledDecoder, TiledEncoder
from scripts.training.losses import kl_divergence

logger = logging.getLogger(__name__)

#: Columns of the metric tables, with the thesis' names.
METRICS = {
    "mse_hu2": "MSE (HU^2)",
    "perceptual": "Perceptual loss",
    "kl": "KL divergence",
    "psnr_db": "PSNR (dB)",
    "ssim": "SSIM",
}


def model_grid(autoencoder_path: str | Path) -> list[int]:
    """The working grid (voxels per axis) the autoencoder at `autoencoder_path` was trained on, from its record."""
    return [
        int(n) for n in load_checkpoint(autoencoder_path, ("autoencoder_record",))["autoencoder_record"]["image_size"]
    ]


@dataclass
class CaseResult:
    """What one case gives: its metrics, its latent (flattened posterior mean) and its image for clustering."""

    case: str
    split: str
    metrics: dict[str, float | None]
    latent: np.ndarray
    image: np.ndarray


class Reconstructor:
    """Encodes, decodes and scores cases with MONAI metrics; `perceptual_loss` is None when its weights are absent.

    `tile` encodes and decodes in tiles of that many latent voxels ("auto": when a whole volume would not fit).
    """

    def __init__(
        self,
        autoencoder: torch.nn.Module,
        hu_window: Sequence[float],
        perceptual_loss: torch.nn.Module | None = None,
        device: torch.device | str = "cpu",
        cluster_grid: int = 32,
        tile: int | Sequence[int] | str | None = AUTO,
    ) -> None:
        self.autoencoder, self.perceptual_loss, self.device = autoencoder, perceptual_loss, torch.device(device)
        self.tile = tile
        self.hu_window, self.cluster_grid = [float(v) for v in hu_window], cluster_grid
        width = self.hu_window[1] - self.hu_window[0]
        self.mse, self.psnr = MSEMetric(), PSNRMetric(max_val=width)
        self.ssim = SSIMMetric(spatial_dims=3, data_range=width)

    def hu(self, image: torch.Tensor) -> torch.Tensor:
        """HU of a [-1, 1] image, as the sampler writes them (clipped to the window, rounded)."""
        return torch.as_tensor(to_hu(image, self.hu_window), dtype=torch.float32)

    @torch.no_grad()
    def reconstruct(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reconstruction of a (1, 1, X, Y, Z) image from its posterior mean, with the posterior's mean and sigma."""
        image = image.to(self.device)
        tile = planned_tile(self.tile, self.autoencoder, image.shape[:1] + image.shape[2:], self.device)
        if tile is None:
            z_mu, z_sigma = self.autoencoder.encode(image)
            return self.autoencoder.decode(z_mu), z_mu, z_sigma
        z_mu, z_sigma = TiledEncoder(self.autoencoder, tile)(image)
        return TiledDecoder(self.autoencoder, tile)(z_mu), z_mu, z_sigma

    @torch.no_grad()
    def score(self, item: Mapping, split: str) -> CaseResult:
        """Metrics, latent and clustering image of one preprocessed case."""
        image = torch.as_tensor(item["image"], dtype=torch.float32)[None]
        reconstruction, z_mu, z_sigma = self.reconstruct(image)
        hu, hu_reconstruction = self.hu(image), self.hu(reconstruction)
        metrics = {
            "mse_hu2": float(self.mse(hu_reconstruction, hu).mean()),
            "perceptual": None,
            "kl": float(kl_divergence(z_mu, z_sigma)),
            "psnr_db": float(self.psnr(hu_reconstruction, hu).mean()),
            "ssim": float(self.ssim(hu_reconstruction, hu).mean()),
        }
        if self.perceptual_loss is not None:
            metrics["perceptual"] = float(self.perceptual_loss(reconstruction.float(), image.to(self.device)))
        small = F.adaptive_avg_pool3d(image, min(self.cluster_grid, image.shape[-1]))
        return CaseResult(case_name(item), split, metrics, z_mu.flatten().cpu().numpy(), small.flatten().numpy())


def summary_rows(results: Sequence[CaseResult], splits: Sequence[str]) -> list[dict]:
    """One row per metric with its mean on each split, as the thesis' tables 6.1 and 6.2."""
    rows = []
    for key, label in METRICS.items():
        row: dict = {"metric": label}
        for split in splits:
            values = [r.metrics[key] for r in results if r.split == split and r.metrics[key] is not None]
            row[split] = float(np.mean(values)) if values else None
        rows.append(row)
    rows.append({"metric": "cases", **{split: sum(r.split == split for r in results) for split in splits}})
    return rows


def latent_figure(results: Sequence[CaseResult], n_clusters: int, seed: int, path: Path) -> Path:
    """t-SNE of the latents coloured by KMeans++ clusters found in image space, test cases marked (figures 6.5/6.6)."""
    clusters = kmeans_clusters(np.stack([r.image for r in results]), n_clusters, seed)
    points = tsne_2d(np.stack([r.latent for r in results]), seed)
    colours = [f"cluster {c}" for c in clusters]
    return scatter(
        points, colours, [r.split for r in results], path, "Latent space (t-SNE), KMeans++ clusters of the images"
    )


@torch.no_grad()
def interpolation_figure(
    reconstructor: Reconstructor, first: Mapping, second: Mapping, steps: int, spacing, path: Path
) -> Path:
    """Decoded linear interpolations between two cases' latents (figure 6.7)."""
    if steps < 2:
        raise ValueError(f"interpolation_steps must be at least 2, got {steps}")
    z = [
        reconstructor.reconstruct(torch.as_tensor(item["image"], dtype=torch.float32)[None])[1]
        for item in (first, second)
    ]
    alphas = np.linspace(0.0, 1.0, steps)
    volumes = [
        reconstructor.hu(reconstructor.autoencoder.decode((1 - a) * z[0] + a * z[1]))[0, 0].numpy()
        for a in alphas.tolist()
    ]
    labels = [f"{a:.2f}" for a in alphas]
    labels[0], labels[-1] = case_name(first), case_name(second)
    return save_strip(volumes, labels, spacing, path, "Latent interpolation")


def reconstruction_figures(
    reconstructor: Reconstructor, datasets: Mapping[str, Dataset], num_figures: int, spacing: Sequence[float], out: Path
) -> list[tuple[str, str]]:
    """Figures of the first `num_figures` cases of each split; returns (caption, file name) pairs."""
    figures = []
    for split, dataset in datasets.items():
        for i in range(min(num_figures, len(dataset))):
            item = dataset[i]
            image = torch.as_tensor(item["image"], dtype=torch.float32)[None]
            hu, hu_reconstruction = (
                reconstructor.hu(x)[0, 0].numpy() for x in (image, reconstructor.reconstruct(image)[0])
            )
            name, case = f"reconstruction_{split}_{i}.png", case_name(item)
            save_reconstruction(hu, hu_reconstruction, spacing, out / name, f"{split}: {case}")
            figures.append((f"{split} case {case}: CT, reconstruction, absolute error", name))
    return figures


def evaluate_autoencoder(
    reconstructor: Reconstructor,
    datasets: Mapping[str, Dataset],
    output_dir: str,
    spacing: Sequence[float],
    model_path: str = "",
    num_figures: int = 2,
    interpolation_steps: int = 7,
    num_clusters: int = 5,
    seed: int = 0,
) -> Path:
    """Score every case of `datasets` (split name -> preprocessed dataset), write tables, figures and report.md to `output_dir`."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = [reconstructor.score(item, split) for split, dataset in datasets.items() for item in dataset]
    if not results:
        raise ValueError(f"no cases to evaluate in the splits {list(datasets)}")
    rows = summary_rows(results, list(datasets))
    table = write_table(rows, out, "metrics")
    write_table([{"case": r.case, "split": r.split, **r.metrics} for r in results], out, "cases")
    perceptual_note = (
        "Perceptual loss: 2.5D ResNet-50 from the local weights given."
        if reconstructor.perceptual_loss is not None
        else "Perceptual loss: not computed, no weights on disk (set `perceptual_weights_path` to a local ResNet-50 state dict)."
    )
    summary = {key: {k: v for k, v in row.items() if k != "metric"} for key, row in zip([*METRICS, "cases"], rows)}
    write_json({"autoencoder": model_path, "metrics": summary, "perceptual": perceptual_note}, out / "metrics.json")

    sections = [
        Section(
            "Reconstruction metrics",
            f"Autoencoder: `{model_path}`. Means over cases; per case in `cases.csv`. {perceptual_note}\n",
            table,
        ),
        Section(
            "Reconstructions and absolute errors",
            figures=reconstruction_figures(reconstructor, datasets, num_figures, spacing, out),
        ),
    ]
    if len(results) >= 3:
        latent_figure(results, num_clusters, seed, out / "latent_tsne.png")
        text = "Marker: split. Colour: KMeans++ cluster of the images.\n"
        sections.append(Section("Latent space", text, figures=[("t-SNE of the latents", "latent_tsne.png")]))
    filled = [d for d in datasets.values() if len(d)]
    if len(results) >= 2:
        first, second = filled[0][0], filled[-1][len(filled[-1]) - 1]
        interpolation_figure(reconstructor, first, second, interpolation_steps, spacing, out / "interpolation.png")
        sections.append(
            Section("Latent interpolation", figures=[("Decoded interpolation between two cases", "interpolation.png")])
        )
    report = write_report(out, "Autoencoder evaluation", sections)
    logger.info("autoencoder evaluation written to %s", report)
    return report
