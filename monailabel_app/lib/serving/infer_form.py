"""An /infer request's form, read before anything runs: the `params` JSON and the NIfTI uploads, each checked
(`checked_uploads` also serves the datastore writes' upload).

- `params` must be a JSON object that names no file: `model`, `image`, `label`, `file` and
  `session_id` come only from the query and the uploads, so no request can point the app at a path
  on the server (another request's upload included).
- `file` (the image) and `label` must be `.nii` or `.nii.gz`: the header is checked first (3D, at
  most the voxel limit) without decompressing the data, then the whole volume is read, so a
  truncated or undecodable upload is refused here and not deep inside the generation.
- Uploads are stored as `tmpXXXXXXXX.nii[.gz]` in the temporary folder (where the app's
  lib/request_files.py accepts them) and deleted when the request ends, answered or refused.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import MultiPartException
from starlette.requests import Request

from lib.request_params import RequestError, shown
from lib.working_frame import read_header

#: Request keys a client may not set through `params`: they name the task or the files it reads.
RESERVED_PARAMS = ("model", "image", "label", "file", "session_id")
UPLOADS = ("file", "label")
NIFTI_SUFFIXES = (".nii.gz", ".nii")


@dataclass(frozen=True)
class InferForm:
    """The checked `params` and the paths of the checked uploads (`file`, `label`) on this server."""

    params: dict[str, Any]
    uploads: dict[str, Path]


def parsed_params(text: Any) -> dict[str, Any]:
    """The form's `params` as a JSON object naming no file, refused (naming `params`) otherwise."""
    if not isinstance(text, str):
        raise RequestError("params", "must be a form field holding a JSON object, not a file")
    try:
        value = json.loads(text)
    except ValueError as error:
        raise RequestError("params", f"is not JSON ({error.msg} at character {error.pos})") from error
    if not isinstance(value, dict):
        raise RequestError("params", f"must be a JSON object, got {shown(json.dumps(value))}")
    named = sorted(set(value) & set(RESERVED_PARAMS))
    if named:
        raise RequestError("params", f"may not set {named}: give the image id in the query, the files as uploads")
    return value


def nifti_suffix(name: str, upload: Any) -> str:
    """`.nii.gz` or `.nii` from the upload's file name, refused (naming the field) for anything else."""
    filename = upload.filename if isinstance(upload, UploadFile) else None
    suffix = next((s for s in NIFTI_SUFFIXES if (filename or "").lower().endswith(s)), None)
    if suffix is None:
        raise RequestError(name, f"must be an uploaded NIfTI file (.nii or .nii.gz), got {shown(filename)}")
    return suffix


def checked_volume(path: Path, name: str, voxel_limit: int) -> None:
    """Refuse the NIfTI at `path` unless its header passes (before decompressing) and all its voxels can be read."""
    image = read_header(path, name, voxel_limit)
    try:
        np.asanyarray(image.dataobj.get_unscaled())
    except Exception as error:  # any failure while decoding: truncated, corrupt, wrong compression
        raise RequestError(
            name, f"is truncated or its voxel data cannot be decoded ({type(error).__name__})"
        ) from error


def fresh_path(suffix: str) -> Path:
    """A new empty `tmpXXXXXXXX<suffix>` in the temporary folder, for one upload."""
    handle, name = tempfile.mkstemp(suffix=suffix)
    os.close(handle)
    return Path(name)


def store(source: BinaryIO, path: Path) -> None:
    """Copy the upload `source` to `path`."""
    with open(path, "wb") as target:
        shutil.copyfileobj(source, target)


async def read_form(request: Request) -> FormData:
    """The multipart form, refused (naming `form`) when it cannot be parsed or holds more than the two uploads."""
    try:
        return await request.form(max_files=len(UPLOADS), max_fields=4)
    except MultiPartException as error:
        raise RequestError("form", error.message) from error


@asynccontextmanager
async def checked_uploads(
    request: Request, names: tuple[str, ...], voxel_limit: int
) -> AsyncIterator[tuple[FormData, dict[str, Path]]]:
    """The request's form with its uploads `names` stored and checked; yields (form, their paths), deleted afterwards."""
    form = await read_form(request)
    paths: dict[str, Path] = {}
    try:
        for name in names:
            upload = form.get(name)
            if upload is None:
                continue
            paths[name] = fresh_path(nifti_suffix(name, upload))  # registered before writing: always deleted
            await run_in_threadpool(store, upload.file, paths[name])
            await run_in_threadpool(checked_volume, paths[name], name, voxel_limit)
        yield form, dict(paths)
    finally:
        for path in paths.values():
            path.unlink(missing_ok=True)
        await form.close()


@asynccontextmanager
async def infer_form(request: Request, voxel_limit: int) -> AsyncIterator[InferForm]:
    """The /infer request's checked form; its uploads exist on disk only inside the `with` block."""
    async with checked_uploads(request, UPLOADS, voxel_limit) as (form, paths):
        yield InferForm(parsed_params(form.get("params", "{}")), paths)
