"""The guard: the ASGI app in front of MONAI Label's that answers the allow-list's routes itself.

- `GET /info/`: MONAI Label's app info plus `queue` (length and capacity), answered in the event loop
  while generations run in the queue's worker thread.
- `POST /infer/<task>`: model, query and form checked first (lib/serving/infer_form.py), then the
  generation queued (lib/serving/generation_queue.py); a refusal is a 4xx naming what was wrong,
  every upload and result file is deleted when the request ends.
- datastore writes (lib/serving/datastore_writes.py) when allowed, else 403; all else is 404.
No HTTP request reaches MONAI Label's endpoints; MONAI Label's app gets only the lifespan events.
"""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from lib.request_params import RequestError, shown
from lib.serving.answers import multipart_result, refusal
from lib.serving.datastore_writes import datastore_write
from lib.serving.generation_queue import GenerationQueue, QueueFull
from lib.serving.infer_form import InferForm, infer_form
from lib.serving.routes import OFFERED, PLAIN_ID, Route, route

#: The one `output` this server sends: MONAI Label's multipart answer (the CT and its JSON), what its client reads.
OUTPUTS = ("all",)


def infer_request(model: str, image: str, form: InferForm) -> dict[str, Any]:
    """The request dict MONAI Label's app takes: the query's image id, replaced by the uploaded file if any."""
    request = {**form.params, "model": model, "image": str(form.uploads.get("file", image))}
    if "label" in form.uploads:
        request["label"] = str(form.uploads["label"])
    return request


def query_problem(request: Request) -> RequestError | None:
    """The refusal of an /infer query that asks for a session, an unsupported output or an image that is a path."""
    query = request.query_params
    if query.get("session_id"):
        return RequestError(
            "session_id", "sessions are not offered by this server: upload the image as the form's file"
        )
    if query.get("output", "all") not in OUTPUTS:
        return RequestError("output", f"must be one of {list(OUTPUTS)}, got {shown(query['output'])}")
    image = query.get("image", "")
    if image and not PLAIN_ID.fullmatch(image):
        return RequestError("image", f"must be a datastore id (a plain file name), got {shown(image)}", 404)
    return None


class Guard:
    """Answers every HTTP request itself (the allow-list's routes, 403/404 for the rest); `inner`, MONAI Label's ASGI
    app, gets only the lifespan events; `instance` is the loaded MONAILabelApp (main.py's LungCTSynthesisApp)."""

    def __init__(self, inner: ASGIApp, instance: Any, queue: GenerationQueue, allow_writes: bool) -> None:
        self.inner, self.instance, self.queue, self.allow_writes = inner, instance, queue, allow_writes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer an HTTP request; pass anything else (the lifespan: MONAI Label's start and stop) on."""
        if scope["type"] != "http":
            await self.inner(scope, receive, send)
            return
        request = Request(scope, receive)
        try:
            answer = await self.answer(request)
        except RequestError as error:
            answer = refusal(error.status, str(error))
        except QueueFull as error:
            answer = refusal(429, str(error), {"Retry-After": str(error.retry_after_s)})
        await answer(scope, receive, send)

    async def answer(self, request: Request) -> Response:
        """This server's answer to `request`; a refusal is raised as RequestError or QueueFull."""
        path = request.url.path
        kind = route(request.method, path)
        if kind is Route.INFO:
            return JSONResponse({**self.instance.info(), "queue": self.queue.status()})
        if kind is Route.INFER:
            return await self.infer(request, path.removeprefix("/infer/"))
        if kind is Route.DATASTORE_WRITE and not self.allow_writes:
            return refusal(
                403, f"{path}: datastore writes are off (the server was started without --allow-datastore-writes)"
            )
        if kind is Route.DATASTORE_WRITE:
            return await datastore_write(request, self.instance.datastore(), self.instance.upload_voxel_limit())
        return refusal(404, f"{request.method} {shown(path)}: not offered; {OFFERED}")

    async def infer(self, request: Request, model: str) -> Response:
        """One /infer request: checked, queued, generated."""
        if model not in self.instance.task_names():
            raise RequestError("model", f"no task {shown(model)}; this server offers {self.instance.task_names()}", 404)
        problem = query_problem(request)
        if problem is not None:
            raise problem
        with self.queue.place():
            async with infer_form(request, self.instance.upload_voxel_limit()) as form:
                job = infer_request(model, request.query_params.get("image", ""), form)
                return await self.queue.run(lambda: self.generate(job))

    def generate(self, job: dict[str, Any]) -> Response:
        """Run the app on `job` (in the queue's worker thread): the multipart result, or the app's refusal."""
        try:
            return multipart_result(self.instance.infer(job))
        except HTTPException as error:
            return refusal(error.status_code, str(error.detail))
