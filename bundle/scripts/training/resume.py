"""Resuming training: find the newest interval checkpoint of a run and restore its state when the engine starts."""

from __future__ import annotations

import logging
import re
from pathlib import Path

from ignite.engine import Engine, Events
from monai.handlers import CheckpointLoader

from scripts.networks.checkpoint import load_checkpoint

logger = logging.getLogger(__name__)


def training_checkpoints(ckpt_dir: str | Path, file_prefix: str) -> list[Path]:
    """Interval checkpoints `<prefix>_checkpoint_epoch=N.pt` in `ckpt_dir`, newest epoch first."""
    pattern = re.compile(rf"^{re.escape(file_prefix)}_checkpoint_epoch=(\d+)\.pt$")
    found = [
        (int(m.group(1)), p)
        for p in Path(ckpt_dir).glob(f"{file_prefix}_checkpoint_epoch=*.pt")
        if (m := pattern.match(p.name))
    ]
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
