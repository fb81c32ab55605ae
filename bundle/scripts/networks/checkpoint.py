"""Checkpoints: self-describing weight files, loaded with the names of today's records.

A weight file is a dict of state dicts, as MONAI's CheckpointSaver writes it; beside the network's
weights it holds a `Record` of plain values (the network's constructor arguments, the working grid,
the scale factor...), so the file alone says how to rebuild and use the network. Everything loads
with `torch.load(weights_only=True)`. Records written before the bundle spelled `tumor` the US way
load with today's keys and values (`upgrade_record`), so older weight files stay valid.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)


class Record:
    """Plain values saved beside weights; has the state_dict protocol ignite's Checkpoint needs."""

    def __init__(self, **values: Any) -> None:
        self.values = dict(values)

    def state_dict(self) -> dict[str, Any]:
        return dict(self.values)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.values.update(state)

    def __getitem__(self, key: str) -> Any:
        return self.values[key]


#: Record keys and values renamed since weights were first shipped: old name -> new name.
RENAMED_RECORD_KEYS = {"tumour_loss_weight": "tumor_loss_weight"}
RENAMED_CONDITION_CHANNELS = {"tumour": "tumor"}


def upgrade_record(record: Mapping[str, Any]) -> dict[str, Any]:
    """`record` with today's key names and conditioning channel names; a record already up to date comes back equal."""
    upgraded = {RENAMED_RECORD_KEYS.get(k, k): v for k, v in record.items()}
    if "condition_channels" in upgraded:
        upgraded["condition_channels"] = [RENAMED_CONDITION_CHANNELS.get(c, c) for c in upgraded["condition_channels"]]
    return upgraded


def load_checkpoint(path: str | Path, keys: tuple[str, ...] = ()) -> dict[str, Any]:
    """Load a checkpoint on the CPU with `weights_only=True`, checking that it holds `keys`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file: say which one
        raise ValueError(f"cannot read checkpoint {path}: {e}") from e
    missing = [k for k in keys if k not in checkpoint]
    if missing:
        raise ValueError(f"checkpoint {path} lacks {missing}; it holds {sorted(checkpoint)}")
    return {k: upgrade_record(v) if k.endswith("_record") else v for k, v in checkpoint.items()}
