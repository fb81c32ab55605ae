"""`synthesize_tumor`: a synthetic chest CT with a tumor where the user clicked or drew it (the bundle's ControlNet).

`TumorTask` is what it shares with `insert_tumor`: the request's image, and a tumor on it.
"""

from __future__ import annotations

from typing import Any

from lib.bundle_generator import BundleGenerator
from lib.infers.synthesize import SAMPLING_KEYS, Synthesize
from lib.result import mask_payload, result
from lib.sampling_request import SamplingLimits
from lib.tumor_request import tumor_request
from scripts.evaluation.adherence import tumor_adherence
from scripts.transforms.conditioning import tumor_condition
from scripts.transforms.preprocess import preprocessing_chain


class TumorTask(Synthesize):
    """A task that reads the request's image and a tumor on it: `foreground` clicks (default diameter from the
    config's `tumor_diameter_mm`) or an uploaded `label` (lib/tumor_request.py)."""

    reads_image = True

    def __init__(self, bundle: BundleGenerator, limits: SamplingLimits, description: str) -> None:
        super().__init__(bundle, limits, description=description)
        self.diameter_mm = float(bundle.defaults["tumor_diameter_mm"])

    @classmethod
    def default_keys(cls) -> tuple[str, ...]:
        """The sampling defaults and the default tumor diameter of the task's config."""
        return (*SAMPLING_KEYS, "tumor_diameter_mm")

    def config(self) -> dict[str, Any]:
        """The sampling defaults plus the default tumor diameter."""
        return {**super().config(), "tumor_diameter_mm": self.diameter_mm}


class SynthesizeTumor(TumorTask):
    """Tumor-conditioned sampling; the mask comes from `foreground` clicks or an uploaded `label` on the request's image.

    The result is placed in the image's world frame (see lib/working_frame.py); the mask travels in
    the JSON (see lib/result.py) with the conditioning adherence of the sample.
    """

    config_file = "inference_tumor.json"

    def __init__(self, bundle: BundleGenerator, limits: SamplingLimits) -> None:
        super().__init__(bundle, limits, "A synthetic chest CT (HU) with a tumor at the clicks or the label")
        self.preprocessing = preprocessing_chain(self.generator.record["image_size"])[0]

    def __call__(self, request: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """MONAI Label's entry point: (CT file, JSON with the tumor mask) for a request whose files the app has checked."""
        params = self.limits.parse(request)
        tumor = tumor_request(request, self.generator.record, self.preprocessing, self.diameter_mm, params.seed)
        hu, steps, seconds = self.generate(params, tumor_condition(tumor.mask))
        return result(
            hu,
            tumor.frame.affine,
            params,
            steps,
            seconds,
            task="synthesize_tumor",
            placement=tumor.frame.rule,
            tumor_source=tumor.source,
            tumor_mask=mask_payload(tumor.mask, tumor.frame.affine),
            adherence=tumor_adherence(hu, tumor.mask, self.generator.spacing),
            **self.structures(hu, tumor.frame.affine, tumor.mask),
        )
