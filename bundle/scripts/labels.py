"""The label map every stage shares: one id per structure, the first listed wins where structures overlap."""

from __future__ import annotations

from types import MappingProxyType

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
