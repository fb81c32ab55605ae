"""The ControlNet's conditioning mask: (tumor, lungs) channels built from a case's labels or from a tumor mask alone."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.transforms import MapTransform, RandomizableTransform

from scripts.data.labels import tumor_channel

#: Channels of the conditioning mask, in order.
CONDITION_CHANNELS = ("tumor", "lungs")


class ConditioningMaskd(RandomizableTransform, MapTransform):
    """Build the (tumor, lungs) conditioning mask from the label channels; drop the lungs with `lung_dropout`.

    `masks` holds the channels of `mask_channels` in configs/common.json; `tumor` is the union
    of `gtv_1` and `gtv_other`. Dropping the lungs at random teaches the ControlNet to work from a
    tumor alone, which is what most users will give.
    """

    def __init__(
        self,
        channel_names: Sequence[str],
        lung_dropout: float = 0.5,
        masks_key: str = "masks",
        output_key: str = "condition",
    ) -> None:
        MapTransform.__init__(self, masks_key)
        RandomizableTransform.__init__(self, prob=lung_dropout)
        self.channel_names = list(channel_names)
        self.lungs = self.channel_names.index("lungs")
        self.masks_key, self.output_key = masks_key, output_key

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        masks = torch.as_tensor(d[self.masks_key])
        self.randomize(None)
        lungs = torch.zeros_like(masks[self.lungs]) if self._do_transform else masks[self.lungs]
        d[self.output_key] = torch.cat([tumor_channel(masks, self.channel_names), lungs[None]]).float()
        return d


def without_tumor(condition: torch.Tensor) -> torch.Tensor:
    """A batch of (tumor, lungs) masks with the tumor relabelled as lung where lungs are given, and left out elsewhere.

    The ControlNet trained on masks with lungs dropped, so a condition without lungs stays without them.
    """
    tumor, lungs = condition[:, :1], condition[:, 1:]
    given = lungs.flatten(1).amax(1).view(-1, 1, *[1] * (condition.dim() - 2)) > 0
    return torch.cat([torch.zeros_like(tumor), torch.where(given, torch.maximum(lungs, tumor), lungs)], dim=1)


def tumor_condition(mask: np.ndarray) -> torch.Tensor:
    """The ControlNet's conditioning mask for a tumor alone: (tumor, no lungs), as the lung dropout trained it."""
    tumor = torch.as_tensor(mask > 0, dtype=torch.float32)
    return torch.stack([tumor, torch.zeros_like(tumor)])
