"""The answers the guard sends itself: a refusal (JSON `detail`, as FastAPI words it) and MONAI Label's multipart result."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from requests_toolbelt import MultipartEncoder
from starlette.responses import JSONResponse, Response

#: The CT is always a .nii.gz (lib/result.py), which MONAI Label sends as a plain byte stream.
RESULT_MEDIA_TYPE = "application/octet-stream"


def refusal(status: int, detail: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    """A 4xx answer whose `detail` says what was wrong, in the shape MONAI Label's own refusals have."""
    return JSONResponse({"detail": detail}, status_code=status, headers=dict(headers or {}))


def multipart_result(result: Mapping[str, Any]) -> Response:
    """MONAI Label's /infer answer (the JSON `params` and the CT file), held in memory; the CT file is deleted."""
    path = Path(result["file"])
    try:
        image = (path.name, path.read_bytes(), RESULT_MEDIA_TYPE)
    finally:
        path.unlink(missing_ok=True)
    encoder = MultipartEncoder(
        fields={"params": (None, json.dumps(result["params"]), "application/json"), "image": image}
    )
    return Response(content=encoder.to_string(), media_type=encoder.content_type)
