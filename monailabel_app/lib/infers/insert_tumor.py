"""`insert_tumor`: the user's own CT with a synthetic tumor where they clicked or drew it (configs/insert_tumor.json)."""

from __future__ import annotations

from typing import Any

from lib.bundle_generator import BundleGenerator
from lib.infers.synthesize_tumor import TumorTask
from lib.request_params import RequestError, number
from lib.result import mask_payload, result, structures_payload
from lib.sampling_request import SamplingLimits
from lib.tumor_request import native_tumor, tumor_input
from lib.working_frame import max_voxels
from scripts.sampling.insertion import MAX_MARGIN_MM, insert_into, insertion_structures
from scripts.sampling.patient_ct import InsertionRefused, read_patient_ct

#: insert_into's report, less what the JSON says elsewhere (`sampling_seconds`) or must not say (the server's path).
UNREPORTED = ("request", "seconds")


class InsertTumor(TumorTask):
    """Tumor insertion into the request's image at its native resolution; the tumor comes from `foreground` clicks or
    an uploaded `label` on that image.

    The result is the user's CT with its own shape and affine, unchanged farther than `blend_margin_mm` from the tumor;
    the tumor mask, and with a segmenter the structures on the same grid, travel in the JSON (see lib/result.py) with
    the insertion's figures.
    """

    config_file = "insert_tumor.json"

    def __init__(self, bundle: BundleGenerator, limits: SamplingLimits) -> None:
        super().__init__(bundle, limits, "The user's CT (HU) with a synthetic tumor at the clicks or the label")
        self.blend_margin_mm = float(bundle.defaults["blend_margin_mm"])
        self.resample_steps = int(bundle.defaults["resample_steps"])

    @classmethod
    def default_keys(cls) -> tuple[str, ...]:
        """The tumor task's defaults plus the blend margin and the RePaint resampling of insert_tumor.json."""
        return (*super().default_keys(), "blend_margin_mm", "resample_steps")

    def config(self) -> dict[str, Any]:
        """The tumor task's defaults plus the default blend margin."""
        return {**super().config(), "blend_margin_mm": self.blend_margin_mm}

    def __call__(self, request: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """MONAI Label's entry point: (the user's CT with the tumor, JSON with the tumor mask) for a checked request."""
        params = self.limits.parse(request)
        margin = number(request, "blend_margin_mm", self.blend_margin_mm, 0.0, MAX_MARGIN_MM)
        tumor = tumor_input(request, max_voxels(self.generator.record), self.diameter_mm)
        mask = native_tumor(tumor, params.seed)
        ct = read_patient_ct(tumor.image.path)
        sampler = self.generator.with_schedule(params.sampler, params.num_inference_steps)
        try:
            inserted = insert_into(sampler, ct, mask, tumor.source, params.seed, margin, self.resample_steps)
        except InsertionRefused as error:  # the tumor, or the image, as a 4xx naming what to change
            raise RequestError(error.parameter, error.reason) from error
        structures = {}
        if self.segmenter is not None:
            label = insertion_structures(self.segmenter, ct, inserted.hu, mask, self.generator.record)
            structures = {"structures": structures_payload(label, ct.affine)}
        return result(
            inserted.hu,
            ct.affine,
            params,
            len(sampler.scheduler.timesteps),
            inserted.report["seconds"],
            task="insert_tumor",
            tumor_source=tumor.source,
            blend_margin_mm=margin,
            resample_steps=self.resample_steps,
            insertion={key: value for key, value in inserted.report.items() if key not in UNREPORTED},
            tumor_mask=mask_payload(mask, ct.affine),
            **structures,
        )
