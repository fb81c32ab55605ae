"""Write a folder under a temporary name and move it into place whole, so a killed run leaves no half-written case."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

#: Suffix of the temporary folders; one left behind by a killed run is safe to delete.
PARTIAL_SUFFIX = ".partial"


@contextmanager
def staged_folder(target: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty temporary folder beside `target`; on success it becomes `target` (replacing it only with `overwrite`)."""
    target = Path(target)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} exists; refusing to replace it without overwrite")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=PARTIAL_SUFFIX, dir=target.parent))
    try:
        yield staging
        if target.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", suffix=PARTIAL_SUFFIX, dir=target.parent))
            os.replace(target, retired / target.name)
            os.replace(staging, target)
            shutil.rmtree(retired)
        else:
            os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def remove_leftovers(folder: Path) -> list[Path]:
    """Delete the temporary folders a killed run left in `folder`; returns them."""
    leftovers = sorted(p for p in Path(folder).glob(f".*{PARTIAL_SUFFIX}") if p.is_dir())
    for path in leftovers:
        shutil.rmtree(path)
    return leftovers
