"""Distances between a set of synthetic and a set of real volumes: 2.5D FID on slice features, and MMD on the volumes."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.metrics import FIDMetric, MMDMetric

from scripts.evaluation.features import AXES


def fid_2p5d(synthetic: Sequence[dict[str, torch.Tensor]], real: Sequence[dict[str, torch.Tensor]]) -> dict[str, float]:
    """FID between the slice features of two sets of volumes, per axis (`fid_<axis>`) and averaged over axes (`fid_2p5d`).

    Each element of `synthetic` and `real` holds one volume's features per axis, as `scripts.evaluation.features` gives them.
    """
    if not synthetic or not real:
        raise ValueError(f"FID needs volumes on both sides, got {len(synthetic)} synthetic and {len(real)} real")
    metric = FIDMetric()
    scores = {}
    for axis in AXES:
        fake = torch.cat([f[axis] for f in synthetic])
        true = torch.cat([f[axis] for f in real])
        if min(len(fake), len(true)) < 2:
            raise ValueError(f"FID needs at least two {axis} slices per set, got {len(fake)} and {len(true)}")
        scores[f"fid_{axis}"] = float(metric(fake, true))
    scores["fid_2p5d"] = float(np.mean([scores[f"fid_{axis}"] for axis in AXES]))
    return scores


def per_voxel(images: torch.Tensor) -> torch.Tensor:
    """Scale flattened volumes by 1/sqrt(voxels), so MMD's inner products become means over voxels, comparable across grids."""
    return images.flatten(1) / float(np.sqrt(images[0].numel()))


def mmd(synthetic: torch.Tensor, real: torch.Tensor, seed: int = 0) -> float:
    """Unbiased linear-kernel MMD (monai MMDMetric) between two batches of volumes, per voxel.

    MONAI's metric needs batches of one size: the larger set is cut to the smaller one's size by a seeded draw.
    """
    n = min(len(synthetic), len(real))
    if n < 2:
        raise ValueError(f"MMD needs at least two volumes per set, got {len(synthetic)} synthetic and {len(real)} real")
    rng = np.random.default_rng(seed)
    pick = [torch.as_tensor(np.sort(rng.choice(len(x), n, replace=False))) for x in (synthetic, real)]
    return float(MMDMetric(y_mapping=per_voxel)(real[pick[1]].float(), synthetic[pick[0]].float()))
