"""The label map every stage shares: one id per structure, the first listed wins where structures overlap."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from types import MappingProxyType

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

LABELS = MappingProxyType(
    {
        "background": 0,
        "gtv_1": 1,
        "gtv_other": 2,
        "lungs": 3,
        "heart": 4,
        "oesophagus": 5,
        "spinal_cord": 6,
        "body": 7,
    }
)

#: Structures in order of precedence: where two overlap, the earlier one is written.
PRECEDENCE = ("gtv_1", "gtv_other", "lungs", "heart", "oesophagus", "spinal_cord", "body")

#: Ids that mark tumour tissue (primary and other GTVs).
TUMOUR_IDS = (LABELS["gtv_1"], LABELS["gtv_other"])

#: Mask channels (names in `mask_channels` of configs/common.json) whose union is the tumour.
TUMOUR_CHANNELS = ("gtv_1", "gtv_other")


def tumour_channel(masks: torch.Tensor, channel_names: Sequence[str], channel_dim: int = 0) -> torch.Tensor:
    """The union of the GTV channels of `masks`, whose channels are named by `channel_names`; keeps the channel dim."""
    names = list(channel_names)
    index = torch.tensor([names.index(n) for n in TUMOUR_CHANNELS], device=masks.device)
    return masks.index_select(channel_dim, index).amax(channel_dim, keepdim=True)


class LabelToChannelsd(MapTransform):
    """Turn a label map into one binary channel per named group of structures, for the networks' masks.

    `channels` maps an output channel name to the structures it covers, for example
    `{"tumour": ["gtv_1", "gtv_other"], "lungs": ["lungs", "gtv_1", "gtv_other"]}`; channels come
    out in that order, stacked into `output_key`.
    """

    def __init__(
        self,
        keys: KeysCollection,
        channels: Mapping[str, Sequence[str]],
        output_key: str = "masks",
        allow_missing_keys: bool = True,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        unknown = sorted({s for group in channels.values() for s in group} - set(LABELS))
        if unknown:
            raise ValueError(f"channels name unknown structures {unknown}; known: {sorted(LABELS)}")
        self.ids = [[LABELS[s] for s in group] for group in channels.values()]
        self.output_key = output_key

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            label = d[key][0]
            masks = [torch.isin(label, torch.as_tensor(ids, dtype=label.dtype)) for ids in self.ids]
            d[self.output_key] = torch.stack(masks).to(torch.float32)
        return d
