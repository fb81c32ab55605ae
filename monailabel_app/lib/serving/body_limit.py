"""The request body limit: a body must declare its length (Content-Length), at most the limit, before it is read."""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from lib.serving.answers import refusal

#: Room for the form's fields and multipart framing besides the uploaded volumes.
FORM_BYTES = 1 << 20


def body_limit(voxel_limit: int) -> int:
    """Bytes a request may send: an uncompressed float32 CT of `voxel_limit` voxels and a uint8 label on its grid."""
    return voxel_limit * (4 + 1) + FORM_BYTES


def body_problem(headers: Headers, limit: int) -> tuple[int, str] | None:
    """(status, message) refusing a body of unknown or excessive length; None when it may be read."""
    length = headers.get("content-length")
    if length is None:
        if "transfer-encoding" in headers:
            return 411, "Content-Length: a request body must declare its length (chunked uploads are not accepted)"
        return None
    if not length.isdigit():
        return 400, f"Content-Length: must be a number of bytes, got {length[:40]!r}"
    if int(length) > limit:
        return 413, f"Content-Length: {length} bytes is more than this server's request body limit of {limit} bytes"
    return None


class BodyLimit:
    """Refuses an HTTP request whose body is over `limit` bytes, or of undeclared length, before reading it."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on, or answer 411/413/400 naming Content-Length."""
        problem = body_problem(Headers(scope=scope), self.limit) if scope["type"] == "http" else None
        if problem is not None:
            await refusal(*problem)(scope, receive, send)
            return
        await self.app(scope, receive, send)
