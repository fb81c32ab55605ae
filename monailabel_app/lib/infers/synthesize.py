"""`synthesize`: an unconditional synthetic chest CT from the bundle's latent diffusion model."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType

from lib.app_conf import AppConf
from lib.bundle_generator import BundleGenerator, load_generator
from lib.result import result, structures_payload
from lib.sampling_request import SamplingLimits, SamplingParams, sampling_limits
from scripts.data.volumes import centred_affine

SAMPLING_KEYS = ("seed", "sampler", "num_inference_steps")


class Synthesize(InferTask):
    """Unconditional sampling: the request's image id is accepted (the endpoint needs one) and never read.

    The result is centred on the world origin, on the model's grid (`image_size`, `image_spacing_mm`).
    """

    config_file = "inference.json"
    reads_image = False

    def __init__(
        self,
        bundle: BundleGenerator,
        limits: SamplingLimits,
        description: str = "A synthetic chest CT (HU), unconditional",
    ) -> None:
        super().__init__(InferType.OTHERS, labels=None, dimension=3, description=description, config=limits.as_config())
        self.generator, self.limits, self.segmenter = bundle.generator, limits, bundle.segmenter

    @classmethod
    def from_bundle(cls, conf: AppConf) -> Synthesize:
        """The task with its networks loaded once from the bundle's config and weights."""
        bundle = load_generator(cls.config_file, conf.bundle_dir, conf.model_dir, cls.default_keys())
        return cls(bundle, sampling_limits(bundle.generator.record, bundle.defaults, conf.max_inference_steps))

    @classmethod
    def default_keys(cls) -> tuple[str, ...]:
        """Config keys whose values are this task's request defaults."""
        return SAMPLING_KEYS

    def is_valid(self) -> bool:
        """Always: a task exists only once its weights are loaded."""
        return True

    def info(self) -> dict[str, Any]:
        """MONAI Label's task info plus the bounds a request must respect."""
        return {
            **super().info(),
            "max_inference_steps": self.limits.max_inference_steps,
            "grid": self.generator.record["image_size"],
        }

    def generate(self, params: SamplingParams, condition: torch.Tensor | None = None) -> tuple[np.ndarray, int, float]:
        """One CT in HU for `params` (steered by `condition` if given), the steps it ran and the seconds it took."""
        started = time.perf_counter()
        sampler = self.generator.with_schedule(params.sampler, params.num_inference_steps)
        hu = sampler.sample([params.seed], condition)[0]
        return hu, len(sampler.scheduler.timesteps), time.perf_counter() - started

    def structures(self, hu: np.ndarray, affine: np.ndarray, tumor: np.ndarray | None = None) -> dict[str, Any]:
        """The JSON entry of the CT's structures (GTV-1 being `tumor` where given); none without a segmenter."""
        return {} if self.segmenter is None else {"structures": structures_payload(self.segmenter(hu, tumor), affine)}

    def __call__(self, request: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """MONAI Label's entry point: (CT file, JSON with the structures) for a request whose files the app has checked."""
        params = self.limits.parse(request)
        hu, steps, seconds = self.generate(params)
        affine = centred_affine(hu.shape, self.generator.spacing)
        return result(hu, affine, params, steps, seconds, task="synthesize", **self.structures(hu, affine))
