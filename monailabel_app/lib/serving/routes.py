"""The allow-list: the few requests this server answers, and the ids a datastore write may use.

MONAI Label's client and the product's Slicer client need `GET /info/` and `POST /infer/<task>`;
with `--allow-datastore-writes`, `PUT /datastore/image` and `PUT /datastore/label` (Slicer's stock
module uploads a CT and saves labels there) with ids that are plain file names. All are answered
by the guard itself (lib/serving/guard.py); no request reaches a MONAI Label endpoint. Everything else (training, batch inference, sessions, logs, OHIF, the DICOMweb proxy, model uploads,
deletions, the API docs) is not offered: 404.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from enum import Enum

from lib.request_params import RequestError, shown

#: A datastore id that is a plain file name: no folder, no `..`, no leading dot.
PLAIN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
#: The datastore writes that may be allowed, and the query parameters each names an id with (required first).
DATASTORE_WRITES = {"/datastore/image": ("image",), "/datastore/label": ("image", "tag")}
OFFERED = "this server offers GET /info/ and POST /infer/<task>"


class Route(Enum):
    """Where a request goes."""

    INFO = "info"
    INFER = "infer"
    DATASTORE_WRITE = "datastore write"
    NOT_OFFERED = "not offered"


def route(method: str, path: str) -> Route:
    """The route of `method path` (the decoded path, so `%2e%2e` is `..`)."""
    if method == "GET" and path in ("/info/", "/info"):
        return Route.INFO
    if method == "POST" and re.fullmatch(r"/infer/[^/]+", path):
        return Route.INFER
    if method == "PUT" and path in DATASTORE_WRITES:
        return Route.DATASTORE_WRITE
    return Route.NOT_OFFERED


def unplain_id(query: Mapping[str, str], path: str) -> RequestError | None:
    """The refusal of a datastore write whose ids are missing or not plain file names; None when they are."""
    required, *optional = DATASTORE_WRITES[path]
    for name in (required, *optional):
        value = query.get(name)
        if value is None and name != required:
            continue
        if value is None or not PLAIN_ID.fullmatch(value):
            return RequestError(
                name, f"must be a plain file name (letters, digits, . _ -; no folders), got {shown(value)}"
            )
    return None
