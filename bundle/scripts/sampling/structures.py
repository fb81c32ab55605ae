"""Organs at risk for every synthetic CT: the structure segmenter's label map, with the requested GTV exactly.

The segmenter (configs/train_segmentation.json) labels a CT on the working grid with the ids of
scripts/data/labels.py. A CT on another grid over the same box (another `image_size`) is resampled
to the segmenter's and its class scores back, so one segmenter serves every resolution.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from monai.inferers import SlidingWindowInferer
from scipy import ndimage

from scripts.data.labels import LABELS, NUM_LABELS
from scripts.networks.loading import load_segmentation

logger = logging.getLogger(__name__)

#: The id a requested tumor mask is written with; the segmenter's own GTV-1 is not used where one is requested.
REQUESTED_TUMOR_ID = LABELS["gtv_1"]


class Segmenter:
    """A trained structure segmenter: label maps (uint8 ids) of CTs in HU on a working grid, by sliding windows."""

    def __init__(self, network: torch.nn.Module, record: dict, device: torch.device | str = "cpu") -> None:
        if record["network"]["out_channels"] != NUM_LABELS:
            raise ValueError(
                f"the segmenter predicts {record['network']['out_channels']} classes, the label map has {NUM_LABELS}"
            )
        self.network, self.record, self.device = network, record, torch.device(device)
        self.inferer = SlidingWindowInferer(roi_size=record["roi_size"], sw_batch_size=1, overlap=0.25, mode="gaussian")

    @torch.no_grad()
    def scores(self, hu: np.ndarray) -> torch.Tensor:
        """Class scores (NUM_LABELS x the shape of `hu`) of a CT in HU over the working box, at any grid size."""
        low, high = self.record["hu_window"]
        image = torch.as_tensor(np.asarray(hu), dtype=torch.float32, device=self.device)
        image = ((image.clamp(low, high) - low) / (high - low) * 2 - 1)[None, None]
        size = tuple(self.record["image_size"])
        resized = image.shape[2:] != size
        if resized:
            image = F.interpolate(image, size=size, mode="trilinear", align_corners=False)
        scores = self.inferer(image, self.network)
        if resized:
            scores = F.interpolate(scores, size=tuple(hu.shape), mode="trilinear", align_corners=False)
        return scores[0]

    def labels(self, hu: np.ndarray, requested: bool = False) -> np.ndarray:
        """The label map of `hu`, without GTV-1 where a tumor is `requested` (its mask is painted in afterwards)."""
        scores = self.scores(hu)
        if requested:
            scores[REQUESTED_TUMOR_ID] = -torch.inf
        return scores.argmax(0).to(torch.uint8).cpu().numpy()

    def __call__(self, hu: np.ndarray, tumor: np.ndarray | None = None) -> np.ndarray:
        """The label map of `hu`; with a requested `tumor` mask, GTV-1 is that mask and nothing else."""
        if tumor is not None and tuple(tumor.shape) != tuple(hu.shape):
            raise ValueError(f"tumor mask of shape {tuple(tumor.shape)} is not on the CT's grid {tuple(hu.shape)}")
        label = self.labels(hu, requested=tumor is not None)
        if tumor is not None:
            label[np.asarray(tumor, bool)] = REQUESTED_TUMOR_ID
        return label

    def on_native_grid(
        self, working_hu: np.ndarray, working_affine: np.ndarray, affine: np.ndarray, tumor: np.ndarray
    ) -> np.ndarray:
        """The label map of a patient's CT on its native grid (`affine`, the shape of `tumor`), labelled on the working
        grid and carried over by nearest voxel; GTV-1 is the native-grid `tumor` exactly. Voxels outside the working
        box (the model's field of view) are background."""
        label = self.labels(working_hu, requested=True)
        to_working = np.linalg.solve(working_affine, affine)
        native = ndimage.affine_transform(
            label, to_working[:3, :3], to_working[:3, 3], tumor.shape, order=0, mode="grid-constant"
        )
        native[np.asarray(tumor, bool)] = REQUESTED_TUMOR_ID
        return native


def structure_segmenter(path: str | Path, enabled: bool = True, device: torch.device | str = "cpu") -> Segmenter | None:
    """The segmenter stored at `path` when `enabled` (the `structures` option of the inference configs) and its weights
    exist, else None (with a warning when they are missing)."""
    if not enabled:
        return None
    if not Path(path).is_file():
        logger.warning(
            "structures: no segmentation weights at %s, so the CTs come without organs at risk; train them with "
            "configs/train_segmentation.json",
            path,
        )
        return None
    network, record = load_segmentation(path, device)
    logger.info("labelling structures with the segmenter in %s", path)
    return Segmenter(network, record, device)
