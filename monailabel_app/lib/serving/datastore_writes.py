"""Datastore writes, with `--allow-datastore-writes` only: a NIfTI image or label stored under plain ids.

`PUT /datastore/image?image=ID` (the form's `file`) and `PUT /datastore/label?image=ID[&tag=TAG]`
(the form's `label`) are answered here, not by MONAI Label's endpoints: the ids must be plain file
names (lib/serving/routes.py), the upload is checked like an /infer upload (NIfTI, at most the
voxel limit, every voxel readable) and deleted when the request ends, answered or refused.
"""

from __future__ import annotations

from typing import Any

from monailabel.interfaces.datastore import DefaultLabelTag
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from lib.request_params import RequestError, shown
from lib.serving.infer_form import checked_uploads
from lib.serving.routes import unplain_id

#: The form field each write uploads.
FIELDS = {"/datastore/image": "file", "/datastore/label": "label"}


async def datastore_write(request: Request, datastore: Any, voxel_limit: int) -> Response:
    """Store the request's upload in `datastore` under its plain ids; a refusal names what was wrong."""
    path, query = request.url.path, request.query_params
    problem = unplain_id(query, path)
    if problem is not None:
        raise problem
    field = FIELDS[path]
    async with checked_uploads(request, (field,), voxel_limit) as (_, uploads):
        if field not in uploads:
            raise RequestError(field, f"is missing: upload the NIfTI as the form's {field!r}")
        if field == "file":
            image = await run_in_threadpool(datastore.add_image, query["image"], str(uploads[field]), {})
            return JSONResponse({"image": image})
        if query["image"] not in datastore.list_images():
            raise RequestError("image", f"{shown(query['image'])} is not an image of this server's datastore", 404)
        tag = query.get("tag", DefaultLabelTag.FINAL.value)
        label = await run_in_threadpool(datastore.save_label, query["image"], str(uploads[field]), tag, {})
        return JSONResponse({"image": query["image"], "label": label})
