"""Training patches of the autoencoder: random crops, a set share of them centred on tumor voxels, the rest in the body.

Training on patches instead of whole volumes bounds the autoencoder's memory by the patch size,
whatever the grid (MAISI trains its VAE on 64^3 to 128^3 crops), and centring a share of them on
the GTV lets small tumors, a few hundred voxels of a 512 x 512 x 128 volume, weigh in the loss.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, RandomizableTransform, SpatialCrop

from scripts.data.labels import TUMOR_IDS

#: Random voxels tried for a body centre before the body's voxels are listed (the body fills a third or more).
_BODY_TRIES = 64


def patch_shape(patch_size: int | Sequence[int]) -> list[int]:
    """`patch_size` as three positive sizes (one number is a cube); the error names patch_size."""
    size = [int(patch_size)] * 3 if isinstance(patch_size, (int, float)) else [int(p) for p in patch_size]
    if len(size) != 3 or min(size) < 1:
        raise ValueError(f"patch_size must be one positive size or three (or null for whole volumes), got {patch_size}")
    return size


class RandTrainingPatchd(RandomizableTransform, MapTransform):
    """Crop `num_patches` patches of `patch_size` from the volumes of `keys`, centred as the label map of `label_key` says.

    Each centre is a tumor voxel (`TUMOR_IDS`) with probability `tumor_fraction` when the case has
    one, else a voxel inside the body (label > 0); the crop is then moved to lie inside the volume.
    `patch_size` None returns whole volumes, so one config trains on either. Each patch records
    whether it was centred on the tumor under `tumor_patch`.
    """

    def __init__(
        self,
        keys: KeysCollection,
        patch_size: int | Sequence[int] | None,
        tumor_fraction: float = 0.3,
        label_key: str = "label",
        num_patches: int = 1,
    ) -> None:
        MapTransform.__init__(self, keys)
        RandomizableTransform.__init__(self, prob=1.0)
        if not 0.0 <= tumor_fraction <= 1.0:
            raise ValueError(f"tumor_patch_fraction must be in [0, 1], got {tumor_fraction}")
        if num_patches < 1:
            raise ValueError(f"patches_per_volume must be >= 1, got {num_patches}")
        self.patch_size = None if patch_size is None else patch_shape(patch_size)
        self.tumor_fraction, self.label_key, self.num_patches = tumor_fraction, label_key, num_patches

    def _body_voxel(self, label: np.ndarray) -> np.ndarray:
        """A voxel drawn uniformly inside the body (label > 0): random tries first, the body's voxel list if they miss."""
        tries = (self.R.random_sample((_BODY_TRIES, 3)) * label.shape).astype(int)
        inside = tries[label[tuple(tries.T)] > 0]
        if len(inside):
            return inside[0]
        body = np.flatnonzero(label > 0)
        if not len(body):  # an unlabelled case: its centre
            return np.asarray(label.shape) // 2
        return np.array(np.unravel_index(body[self.R.randint(len(body))], label.shape))

    def _centres(self, label: np.ndarray) -> list[tuple[np.ndarray, bool]]:
        """`num_patches` crop centres (voxel indices), each with whether it lies on the tumor."""
        tumor = np.flatnonzero(np.isin(label, TUMOR_IDS))
        centres = []
        for _ in range(self.num_patches):
            if len(tumor) and self.R.random_sample() < self.tumor_fraction:
                centres.append((np.array(np.unravel_index(tumor[self.R.randint(len(tumor))], label.shape)), True))
            else:
                centres.append((self._body_voxel(label), False))
        return centres

    def _crop_start(self, centre: np.ndarray, shape: Sequence[int]) -> list[int]:
        """The corner of the patch around `centre`, moved to lie inside a volume of `shape`."""
        if any(p > n for p, n in zip(self.patch_size, shape)):
            raise ValueError(f"patch_size {self.patch_size} is larger than the preprocessed volume {list(shape)}")
        return [int(np.clip(c - p // 2, 0, n - p)) for c, p, n in zip(centre, self.patch_size, shape)]

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> list[dict[Hashable, torch.Tensor]] | dict:
        if self.patch_size is None:
            return dict(data)
        label = np.asarray(data[self.label_key])[0]
        patches = []
        for centre, on_tumor in self._centres(label):
            start = self._crop_start(centre, label.shape)
            crop = SpatialCrop(roi_start=start, roi_end=[s + p for s, p in zip(start, self.patch_size)])
            patch = dict(data)
            for key in self.key_iterator(patch):
                patch[key] = crop(patch[key])
            patch["tumor_patch"] = torch.tensor(on_tumor)
            patches.append(patch)
        return patches
