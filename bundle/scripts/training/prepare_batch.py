"""Prepare-batch classes: what the noise trainers feed the networks, beyond MONAI's DiffusionPrepareBatch.

`TumorWeightedPrepareBatch` appends a per-voxel loss weight and the tumor on the latent grid to the target
(see `scripts.training.losses.weighted_mse` and `scripts.training.contrastive`); `RectifiedFlowPrepareBatch`
turns a DDPM batch into a rectified-flow one; `noise_prepare_batch` picks them for a noise stage's schedule.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from monai.engines.utils import DiffusionPrepareBatch
from monai.networks.schedulers import RFlowScheduler, Scheduler


class TumorWeightedPrepareBatch(DiffusionPrepareBatch):
    """DiffusionPrepareBatch whose target also carries a per-voxel loss weight, `tumor_weight` inside the tumor.

    The target is the noise (C channels) followed by the weight map and the tumor mask on the latent grid
    (a latent voxel counts as tumor when any image voxel under it does); `weighted_mse` and
    `TumorContrastiveLoss` split them again.
    """

    def __init__(self, num_train_timesteps: int, tumor_weight: float = 1.0, condition_name: str = "condition") -> None:
        super().__init__(num_train_timesteps, condition_name=condition_name)
        if tumor_weight < 1.0:
            raise ValueError(f"tumor_weight must be >= 1, got {tumor_weight}")
        self.tumor_weight = tumor_weight

    def __call__(self, batchdata, device=None, non_blocking: bool = False, **kwargs):
        images, noise, args, infer_kwargs = super().__call__(batchdata, device, non_blocking, **kwargs)
        tumor = infer_kwargs["condition"][:, :1]
        latent_tumor = F.adaptive_max_pool3d(tumor.float(), images.shape[2:]).to(noise.dtype)
        weight = 1.0 + (self.tumor_weight - 1.0) * latent_tumor
        return images, torch.cat([noise, weight, latent_tumor], dim=1), args, infer_kwargs


class RectifiedFlowPrepareBatch:
    """Turn a DiffusionPrepareBatch's output into a rectified-flow one: timesteps from the scheduler, velocity target.

    The wrapped callable draws the noise (and any condition); this one replaces the timesteps by
    `scheduler.sample_timesteps` and the first `C` target channels (C = image channels) by the
    velocity `images - noise`, keeping any extra target channels (such as a loss-weight map).
    """

    def __init__(self, scheduler: RFlowScheduler, prepare_batch: Callable) -> None:
        if not isinstance(scheduler, RFlowScheduler):
            raise ValueError(
                f"RectifiedFlowPrepareBatch needs an RFlowScheduler as noise_scheduler, got {type(scheduler).__name__}"
            )
        self.scheduler, self.prepare_batch = scheduler, prepare_batch

    def __call__(
        self, batchdata: Any, device: torch.device | str | None = None, non_blocking: bool = False, **kwargs: Any
    ):
        images, target, args, infer_kwargs = self.prepare_batch(batchdata, device, non_blocking, **kwargs)
        infer_kwargs["timesteps"] = self.scheduler.sample_timesteps(images).to(images.device)
        velocity = images - infer_kwargs["noise"]
        return images, torch.cat([velocity, target[:, images.shape[1] :]], dim=1), args, infer_kwargs


def noise_prepare_batch(
    scheduler: Scheduler, condition_name: str | None = None, tumor_weight: float | None = None
) -> Callable:
    """A noise stage's batches for `scheduler`: noise targets for DDPM, velocity targets for rectified flow.

    `condition_name` names the batch key passed to the network as its condition (the ControlNet's mask). With
    `tumor_weight` (ControlNet training) the target also carries the weight map and latent tumor of
    `TumorWeightedPrepareBatch`; without it the target is the plain one the validation MSE compares with.
    """
    steps = int(scheduler.num_train_timesteps)
    if tumor_weight is None:
        batches = DiffusionPrepareBatch(steps, condition_name=condition_name)
    else:
        batches = TumorWeightedPrepareBatch(steps, tumor_weight, condition_name or "condition")
    return RectifiedFlowPrepareBatch(scheduler, batches) if isinstance(scheduler, RFlowScheduler) else batches
