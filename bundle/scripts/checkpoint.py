"""Checkpoints: self-describing weight files, finding the latest training state, and resuming from it.

A weight file is a dict of state dicts, as MONAI's CheckpointSaver writes it; beside the network's
weights it holds a `Record` of plain values (the network's constructor arguments, the working grid,
the scale factor...), so the file alone says how to rebuild and use the network. Everything loads
with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.handlers import CheckpointLoader

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
    return checkpoint


def training_checkpoints(ckpt_dir: str | Path, file_prefix: str) -> list[Path]:
    """Interval checkpoints `<prefix>_checkpoint_epoch=N.pt` in `ckpt_dir`, newest epoch first."""
    pattern = re.compile(rf"^{re.escape(file_prefix)}_checkpoint_epoch=(\d+)\.pt$")
    found = [(int(m.group(1)), p) for p in Path(ckpt_dir).glob(f"{file_prefix}_checkpoint_epoch=*.pt") if (m := pattern.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


class ResumeFromCheckpoint:
    """On engine start, restore the newest readable training checkpoint in `ckpt_dir`, if there is one.

    A run killed mid-training and started again continues at the epoch after its last checkpoint,
    with its optimizers and discriminator; a checkpoint left half-written by the kill is skipped.
    `max_epochs` is taken from the new run, so training can also be extended.
    """

    def __init__(self, ckpt_dir: str, file_prefix: str, load_dict: dict, enabled: bool = True) -> None:
        self.ckpt_dir, self.file_prefix, self.load_dict, self.enabled = ckpt_dir, file_prefix, load_dict, enabled

    def attach(self, engine: Engine) -> None:
        if self.enabled:
            engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        for path in training_checkpoints(self.ckpt_dir, self.file_prefix):
            try:
                load_checkpoint(path, tuple(self.load_dict))
            except ValueError as e:
                logger.warning("skipping unreadable checkpoint: %s", e)
                continue
            CheckpointLoader(load_path=str(path), load_dict=self.load_dict, map_location=engine.state.device)(engine)
            logger.info("resumed from %s at epoch %d of %d", path, engine.state.epoch, engine.state.max_epochs)
            return
        logger.info("no checkpoint to resume from in %s, starting from scratch", self.ckpt_dir)
