"""MONAI Label app: synthetic chest CTs from the lung CT latent diffusion bundle, for 3D Slicer users.

Tasks (lib/infers): `synthesize` (unconditional), `synthesize_tumor` (a tumor at `foreground`
clicks or in an uploaded `label`) and `insert_tumor` (such a tumor in the user's own CT). Networks
and weights come from the bundle (lib/bundle_generator.py); `--conf bundle_dir DIR`,
`--conf model_dir DIR` and `--conf max_inference_steps N` are read by lib/app_conf.py. This file
only wires; see README.md for serving and the Slicer client.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import HTTPException
from monailabel.config import settings
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.tasks.infer_v2 import InferTask

from lib.app_conf import app_conf, bundle_dir, import_bundle

# The bundle's `scripts` package must be importable before the task modules import it.
SERVED_BUNDLE = bundle_dir(settings.MONAI_LABEL_APP_CONF)
import_bundle(SERVED_BUNDLE)

from lib.infers.insert_tumor import InsertTumor  # noqa: E402
from lib.infers.synthesize import Synthesize  # noqa: E402
from lib.infers.synthesize_tumor import SynthesizeTumor  # noqa: E402
from lib.request_files import checked_files  # noqa: E402
from lib.request_params import RequestError, shown  # noqa: E402
from lib.working_frame import max_voxels  # noqa: E402

logger = logging.getLogger(__name__)

TASKS = {"synthesize": Synthesize, "synthesize_tumor": SynthesizeTumor, "insert_tumor": InsertTumor}


class LungCTSynthesisApp(MONAILabelApp):
    """Serves the bundle's generator; validates every request inside the HTTP call (4xx naming the parameter)."""

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        self.app_conf = app_conf(conf or {})
        if self.app_conf.bundle_dir != SERVED_BUNDLE:
            raise ValueError(
                f"bundle_dir: this process imported {SERVED_BUNDLE}; give --conf bundle_dir when the server starts"
            )
        metadata = json.loads((SERVED_BUNDLE / "configs" / "metadata.json").read_text())
        super().__init__(
            app_dir,
            studies,
            conf,
            name="Lung CT synthesis",
            description=metadata.get("description", ""),
            version=metadata["version"],
        )

    def init_infers(self) -> dict[str, InferTask]:
        """Each task whose weights exist; a missing weight file leaves that task out with a warning."""
        tasks: dict[str, InferTask] = {}
        for name, task in TASKS.items():
            try:
                tasks[name] = task.from_bundle(self.app_conf)
            except FileNotFoundError as error:
                logger.warning("%s is not offered: %s", name, error)
        return tasks

    def task_names(self) -> list[str]:
        """The tasks this server offers."""
        return sorted(self._infers)

    def upload_voxel_limit(self) -> int:
        """The most voxels an uploaded image or label may declare: the largest field of view at 1 mm of the tasks."""
        return max(max_voxels(task.generator.record) for task in self._infers.values())

    def infer(self, request: dict[str, Any], datastore=None) -> dict[str, Any]:
        """Check the model, the files and (in the task) every parameter; a refusal becomes an HTTP 4xx."""
        try:
            model = request.get("model")
            task = self._infers.get(model) if isinstance(model, str) else None
            if task is None:
                raise RequestError("model", f"no task {shown(model)}; this server offers {self.task_names()}", 404)
            checked = checked_files(request, datastore or self.datastore(), task.reads_image)
            checked["save_label"] = False  # a synthetic CT is never stored as a label of the user's image
            return super().infer(checked, datastore)
        except RequestError as error:
            raise HTTPException(status_code=error.status, detail=str(error)) from error
