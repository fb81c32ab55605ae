"""The sampling parameters of a request (`seed`, `sampler`, `num_inference_steps`), checked against the task's limits.

The networks are loaded once per task; a request only picks the schedule, through
`LatentDiffusionSampler.with_schedule`, which shares the loaded networks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lib.request_params import RequestError, choice, integer
from scripts.networks.schedules import COMPATIBLE_SAMPLERS, resolve_sampling, trained_schedule

#: Seeds seed numpy and torch generators alike.
MAX_SEED = 2**32 - 1


@dataclass(frozen=True)
class SamplingParams:
    """What one request asks of the sampler."""

    seed: int
    sampler: str
    num_inference_steps: int


@dataclass(frozen=True)
class SamplingLimits:
    """Defaults (from the bundle config) and the bounds a request must respect."""

    seed: int
    sampler: str
    num_inference_steps: int
    max_inference_steps: int
    train_steps: int
    samplers: tuple[str, ...]

    def parse(self, request: Mapping[str, Any]) -> SamplingParams:
        """The request's sampling parameters, each checked; a refusal names the parameter."""
        sampler = choice(request, "sampler", self.sampler, sorted(self.samplers))
        steps = integer(request, "num_inference_steps", self.num_inference_steps, 1, self.max_inference_steps)
        if sampler == "ddpm" and self.train_steps > self.max_inference_steps:
            raise RequestError(
                "sampler",
                f"ddpm runs all {self.train_steps} training steps, more than this server's max_inference_steps ({self.max_inference_steps})",
            )
        return SamplingParams(integer(request, "seed", self.seed, 0, MAX_SEED), sampler, steps)

    def as_config(self) -> dict[str, Any]:
        """The defaults, as MONAI Label shows a task's config to clients."""
        return {"seed": self.seed, "sampler": self.sampler, "num_inference_steps": self.num_inference_steps}


def sampling_limits(record: Mapping[str, Any], defaults: Mapping[str, Any], max_inference_steps: int) -> SamplingLimits:
    """Limits for the diffusion model of `record`: at most `max_inference_steps`, no more steps than it was trained
    with, and only the samplers its training schedule admits (DDPM/DDIM, or RFlow). The bundle's default sampler
    `auto` becomes the model's fast sampler, and default steps of None that sampler's."""
    train_steps = int(record["noise_schedule"]["num_train_timesteps"])
    most = min(max_inference_steps, train_steps)
    sampler, steps = resolve_sampling(record, str(defaults["sampler"]), defaults["num_inference_steps"])
    samplers = COMPATIBLE_SAMPLERS[trained_schedule(record)]
    return SamplingLimits(int(defaults["seed"]), sampler, min(steps, most), most, train_steps, samplers)
