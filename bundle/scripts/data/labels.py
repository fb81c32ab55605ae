"""The label map every stage shares: one id per structure, the first listed wins where structures overlap."""

from __future__ import annotations

from collections.abc import Sequence
from types import MappingProxyType

import torch

LABELS = MappingProxyType(
    {
        "background": 0,
        "gtv_1": 1,
        "gtv_other": 2,
        "lungs": 3,
        "heart": 4,
        "esophagus": 5,
        "spinal_cord": 6,
        "body": 7,
    }
)

#: The TG-263 name of each structure of the label map, as planning systems and the exported RTSTRUCT name them.
TG263_NAMES = MappingProxyType(
    {
        "gtv_1": "GTV-1",
        "gtv_other": "GTV-2",
        "lungs": "Lungs",
        "heart": "Heart",
        "esophagus": "Esophagus",
        "spinal_cord": "SpinalCord",
        "body": "External",
    }
)

#: Number of label ids: the classes a segmentation network of the label map predicts.
NUM_LABELS = len(LABELS)

#: Structures in order of precedence: where two overlap, the earlier one is written.
PRECEDENCE = ("gtv_1", "gtv_other", "lungs", "heart", "esophagus", "spinal_cord", "body")

#: Ids that mark tumor tissue (primary and other GTVs).
TUMOR_IDS = (LABELS["gtv_1"], LABELS["gtv_other"])

#: Mask channels (names in `mask_channels` of configs/common.json) whose union is the tumor.
TUMOR_CHANNELS = ("gtv_1", "gtv_other")


def tumor_channel(masks: torch.Tensor, channel_names: Sequence[str], channel_dim: int = 0) -> torch.Tensor:
    """The union of the GTV channels of `masks`, whose channels are named by `channel_names`; keeps the channel dim."""
    names = list(channel_names)
    index = torch.tensor([names.index(n) for n in TUMOR_CHANNELS], device=masks.device)
    return masks.index_select(channel_dim, index).amax(channel_dim, keepdim=True)
