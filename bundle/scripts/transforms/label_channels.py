"""Label map to binary channels: the networks' masks (tumor, lungs, body...) from the one label map of a case."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

from scripts.data.labels import LABELS


class LabelToChannelsd(MapTransform):
    """Turn a label map into one binary channel per named group of structures, for the networks' masks.

    `channels` maps an output channel name to the structures it covers, for example
    `{"tumor": ["gtv_1", "gtv_other"], "lungs": ["lungs", "gtv_1", "gtv_other"]}`; channels come
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
