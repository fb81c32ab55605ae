"""Diversity of a set of volumes: mean SSIM and MS-SSIM over pairs of them (0 is fully diverse, 1 is all alike), as the thesis' table 6.4."""

from __future__ import annotations

from itertools import combinations

import numpy as np
import torch
from monai.metrics import MultiScaleSSIMMetric, SSIMMetric


def volume_pairs(n: int, max_pairs: int, seed: int = 0) -> list[tuple[int, int]]:
    """All index pairs of `n` volumes, or a seeded draw of `max_pairs` of them (3D SSIM is costly on a CPU)."""
    pairs = list(combinations(range(n), 2))
    if len(pairs) <= max_pairs:
        return pairs
    rng = np.random.default_rng(seed)
    return [pairs[i] for i in sorted(rng.choice(len(pairs), max_pairs, replace=False))]


@torch.no_grad()
def diversity(
    images: torch.Tensor, ssim: SSIMMetric, ms_ssim: MultiScaleSSIMMetric, max_pairs: int = 100, seed: int = 0
) -> dict[str, float]:
    """Mean `ssim_diversity` and `ms_ssim_diversity` over pairs of `images` (N, 1, X, Y, Z), and the number of pairs used."""
    if len(images) < 2:
        raise ValueError(f"diversity needs at least two volumes, got {len(images)}")
    pairs = volume_pairs(len(images), max_pairs, seed)
    scores = np.array(
        [
            [float(metric(images[i : i + 1].float(), images[j : j + 1].float())) for metric in (ssim, ms_ssim)]
            for i, j in pairs
        ]
    )
    return {
        "ssim_diversity": float(scores[:, 0].mean()),
        "ms_ssim_diversity": float(scores[:, 1].mean()),
        "diversity_pairs": len(pairs),
    }
