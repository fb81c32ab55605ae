"""Which files a request may make the app read: never a path typed into the request.

MONAI Label merges the form's `params` JSON over the request, so `image` and `label` may be any
string a client chose. The app reads an image only when it is an id of the server's datastore (the
datastore resolves it) or the file the /infer endpoint itself stored from the form's `file` upload,
and a label only when it is the endpoint's file from the form's `label` upload. Those uploads are
fresh `tmpXXXXXXXX.nii[.gz]` files directly in the server's temporary folder; anything else is refused.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any

from monailabel.interfaces.datastore import Datastore

from lib.request_params import RequestError, shown

#: The name Python's NamedTemporaryFile gives the /infer endpoint's uploads, for the NIfTI files the app reads.
UPLOAD_NAME = re.compile(r"tmp[a-z0-9_]{8}(\..*)?\.nii(\.gz)?")


def is_upload(value: Any) -> bool:
    """Whether `value` names a NIfTI file the /infer endpoint stored from an upload (not a link, not elsewhere)."""
    if not isinstance(value, str) or not value:
        return False
    path = Path(value)
    return (
        path.parent == Path(tempfile.gettempdir())
        and UPLOAD_NAME.fullmatch(path.name) is not None
        and path.is_file()
        and not path.is_symlink()
    )


def checked_files(request: dict[str, Any], datastore: Datastore, reads_image: bool) -> dict[str, Any]:
    """`request` with `image` and `label` refused unless the app may read them; a task that reads no image gets none."""
    checked = dict(request)
    label = checked.get("label")
    if label is not None and not is_upload(label):
        raise RequestError(
            "label", "is read only from the form's label upload (a .nii or .nii.gz file), never from a path in params"
        )
    if not reads_image:
        checked["image"] = ""
        checked.pop("label", None)
        return checked
    image = checked.get("image")
    if not (is_upload(image) or (isinstance(image, str) and image in datastore.list_images())):
        raise RequestError(
            "image",
            f"{shown(image)} is neither an image of this server's datastore nor a NIfTI (.nii, .nii.gz) uploaded as the form's file",
            404,
        )
    return checked
