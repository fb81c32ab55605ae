"""Noise schedules a diffusion U-Net is trained with (DDPM or rectified flow), and the samplers each one admits.

A DDPM-trained U-Net predicts the noise and samples with `ddpm` or `ddim`; a rectified-flow
(RFlow, as MAISI v2) U-Net predicts the velocity `x0 - noise` and samples with `rflow`, in 30
steps or fewer. The diffusion checkpoint's record names its schedule under `schedule_type`; records
written before that key existed are DDPM. Sampling defaults to the fast sampler the schedule admits
(`auto`: DDIM-25 for DDPM, RFlow-10 for RFlow), so one inference config serves both kinds of model.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from monai.networks.schedulers import DDPMScheduler, RFlowScheduler, Scheduler

#: Training schedules and the scheduler class each one trains with.
TRAINING_SCHEDULERS = {"ddpm": DDPMScheduler, "rflow": RFlowScheduler}

#: Samplers that fit a model trained with each schedule.
COMPATIBLE_SAMPLERS = {"ddpm": ("ddpm", "ddim"), "rflow": ("rflow",)}

#: The sampler name that picks the fast sampler of the model's schedule, and what it picks.
AUTO_SAMPLER = "auto"
FAST_SAMPLERS = {"ddpm": "ddim", "rflow": "rflow"}

#: Reverse steps when none are asked for (see the bundle README's Performance); DDPM always runs all training steps.
DEFAULT_STEPS = {"ddim": 25, "rflow": 10}


def trained_schedule(record: Mapping[str, Any]) -> str:
    """The schedule a diffusion record was trained with; records without `schedule_type` predate RFlow and are DDPM."""
    return str(record.get("schedule_type", "ddpm"))


def training_scheduler(schedule_type: str, noise_schedule: Mapping[str, Any]) -> Scheduler:
    """The training scheduler of `schedule_type` built from `noise_schedule`; errors name the key at fault."""
    if schedule_type not in TRAINING_SCHEDULERS:
        raise ValueError(f"schedule_type must be one of {sorted(TRAINING_SCHEDULERS)}, got {schedule_type!r}")
    try:
        return TRAINING_SCHEDULERS[schedule_type](**noise_schedule)
    except TypeError as e:
        raise ValueError(
            f"noise_schedule does not fit schedule_type {schedule_type!r} (overlay configs/rflow.json for rflow): {e}"
        ) from e


def controlnet_scheduler(diffusion_record: Mapping[str, Any]) -> Scheduler:
    """The ControlNet stage's training scheduler: the one the diffusion model was trained with (DDPM or RFlow)."""
    return training_scheduler(trained_schedule(diffusion_record), diffusion_record["noise_schedule"])


def resolve_sampling(
    record: Mapping[str, Any], sampler: str = AUTO_SAMPLER, num_inference_steps: int | None = None
) -> tuple[str, int]:
    """The sampler and reverse steps to run on the model of diffusion `record`.

    `auto` is the fast sampler of its schedule and None steps that sampler's default; `ddpm` runs every
    training step whatever is asked. A sampler the schedule does not admit is refused by name.
    """
    schedule = trained_schedule(record)
    known = sorted({AUTO_SAMPLER, *(s for samplers in COMPATIBLE_SAMPLERS.values() for s in samplers)})
    if sampler not in known:
        raise ValueError(f"sampler must be one of {known}, got {sampler!r}")
    sampler = FAST_SAMPLERS[schedule] if sampler == AUTO_SAMPLER else sampler
    check_sampler(sampler, schedule)
    if sampler == "ddpm":
        return sampler, int(record["noise_schedule"]["num_train_timesteps"])
    return sampler, DEFAULT_STEPS[sampler] if num_inference_steps is None else int(num_inference_steps)


def check_sampler(sampler: str, schedule: str) -> None:
    """Refuse a sampler that cannot sample a model trained with `schedule`, naming the samplers that can."""
    allowed = COMPATIBLE_SAMPLERS[schedule]
    if sampler not in allowed:
        raise ValueError(
            f"sampler {sampler!r} cannot sample a model trained with the {schedule!r} schedule; use sampler {' or '.join(allowed)}"
        )
