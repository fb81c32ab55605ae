"""The Slicer client's logic that needs no Slicer: the request, the call through MONAILabelClient, the files it returns.

Importable in plain Python (tests) and in 3D Slicer, whose MONAI Label extension ships the same
client as `MONAILabelLib`. The server's JSON carries the tumor mask as a base64 gzipped NIfTI
(`tumor_mask.data`), and the structures as a label map (`structures.data`, its ids named in `structures.labels`);
`synthesize` writes both beside the CT. The same call serves every task: `synthesize`,
`synthesize_tumor` and `insert_tumor` (the uploaded CT itself, with the tumor).
"""

from __future__ import annotations

import base64
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

try:
    from monailabel.client import MONAILabelClient
except ImportError:  # inside 3D Slicer: the MONAI Label extension's copy of the client
    from MONAILabelLib import MONAILabelClient

TASK, TUMOR_TASK, INSERT_TASK = "synthesize", "synthesize_tumor", "insert_tumor"
#: Any image id will do for unconditional sampling; the endpoint only needs one.
NO_IMAGE = "synthetic"
MASK_FORMAT = "nifti-gz-base64"


@dataclass(frozen=True)
class Synthesis:
    """A generated case on this machine: the CT file, the tumor mask and structures files (if any), the server's
    description (`structures_labels`: the name of each id of the structures' label map)."""

    ct_path: Path
    mask_path: Path | None
    info: dict[str, Any]
    structures_path: Path | None = None


def ras_to_voxel(ras_mm: Sequence[float], ras_to_ijk: np.ndarray) -> list[float]:
    """A world point (RAS mm, as Slicer's markups give it) as the voxel position [i, j, k] the server expects."""
    return (np.asarray(ras_to_ijk, float) @ [*map(float, ras_mm), 1.0])[:3].tolist()


def request_params(
    seed: int,
    num_inference_steps: int | None = None,
    sampler: str | None = None,
    foreground: Sequence[Sequence[float]] | None = None,
    tumor_diameter_mm: float | None = None,
    blend_margin_mm: float | None = None,
) -> dict[str, Any]:
    """The params JSON of a request, with only the values that are set: the server picks the sampler and steps left
    out (its model's fast sampler); `blend_margin_mm` is insert_tumor's."""
    params: dict[str, Any] = {"seed": int(seed)}
    if num_inference_steps is not None:
        params["num_inference_steps"] = int(num_inference_steps)
    if sampler is not None:
        params["sampler"] = sampler
    if foreground:
        params["foreground"] = [[float(c) for c in point] for point in foreground]
    if tumor_diameter_mm is not None:
        params["tumor_diameter_mm"] = float(tumor_diameter_mm)
    if blend_margin_mm is not None:
        params["blend_margin_mm"] = float(blend_margin_mm)
    return params


def save_mask(info: dict[str, Any], path: Path, key: str = "tumor_mask") -> Path | None:
    """Write the volume the server's JSON carries under `key` (the tumor mask, or `structures`) to `path` (.nii.gz);
    None when the result has none."""
    mask = info.get(key)
    if mask is None:
        return None
    if mask.get("format") != MASK_FORMAT:
        raise ValueError(f"{key} comes as {mask.get('format')!r}; this client reads {MASK_FORMAT!r}")
    path.write_bytes(base64.b64decode(mask["data"], validate=True))
    return path


def synthesize(
    server_url: str,
    model: str,
    params: dict[str, Any],
    out_dir: Path,
    image_id: str = NO_IMAGE,
    image_file: Path | None = None,
    label_file: Path | None = None,
    token: str | None = None,
) -> Synthesis:
    """Run `model` on the server (sending `token` as a bearer token if given); the CT, mask and structures land in
    `out_dir` as `<model>_seed<N>_ct.nii.gz`, `_mask.nii.gz` and `_structures.nii.gz`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        client = MONAILabelClient(server_url, tmpdir=scratch)
        client.update_auth({"token_type": "Bearer", "access_token": token} if token else None)
        received, info = client.infer(
            model,
            "" if image_file else image_id,
            dict(params),
            label_in=str(label_file) if label_file else None,
            file=str(image_file) if image_file else None,
        )
        if received is None or Path(received).resolve().parent != Path(scratch).resolve():
            raise ValueError(f"the server sent no CT file, or named it outside the download folder: {received!r}")
        stem = f"{model}_seed{info['seed']}"
        ct_path = Path(shutil.move(received, out / f"{stem}_ct.nii.gz"))
    mask_path = save_mask(info, out / f"{stem}_mask.nii.gz")
    structures_path = save_mask(info, out / f"{stem}_structures.nii.gz", "structures")
    described = {key: value for key, value in info.items() if key not in ("tumor_mask", "structures")}
    if structures_path is not None:
        described["structures_labels"] = info["structures"]["labels"]
    return Synthesis(ct_path, mask_path, described, structures_path)
