"""A cohort's folder: cohort.json (its identity), each patient's patient.json, and manifest.csv, written so that
several ranks can share the folder and a killed run resumes.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from scripts.bundle_config import BUNDLE_DIR
from scripts.sampling.cohort_spec import CohortSpec, PatientPlan, dotted

COHORT_FILE = "cohort.json"
PATIENT_FILE = "patient.json"
MANIFEST_FILE = "manifest.csv"
#: Suffix of the temporary files beside the file they become; one left by a killed run is safe to delete.
TEMPORARY_SUFFIX = ".tmp"

#: The keys of a patient record (patient.json), which are also the manifest's columns, in order. rejected_seeds and
#: files are lists (files relative to the cohort folder); the tumor keys are None for a patient without a tumor;
#: quality is "pass" or "fail: <reasons>".
PATIENT_RECORD_KEYS = (
    "patient_id",
    "seed",
    "attempts",
    "rejected_seeds",
    "tumor_side",
    "tumor_diameter_mm",
    "tumor_volume_ml",
    "quality",
    "files",
)


@contextlib.contextmanager
def _temporary_beside(path: Path) -> Iterator[Path]:
    """A fresh name beside `path` for a file to move into place; whatever is left under it afterwards is removed."""
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}{TEMPORARY_SUFFIX}")
    try:
        yield temporary
    finally:
        temporary.unlink(missing_ok=True)


def _write_new_file(path: Path, text: str) -> None:
    """Write `text` to the new file `path` and flush it to disk, before it is moved into place."""
    with open(path, "x", encoding="utf-8", newline="") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def _write_atomically(path: Path, text: str) -> None:
    """Replace `path` by a file holding `text`, so a reader sees the old file or the whole new one."""
    with _temporary_beside(path) as temporary:
        _write_new_file(temporary, text)
        os.replace(temporary, path)


def _publish_once(path: Path, text: str) -> None:
    """Create `path` whole with `text` unless it exists: a file another process published meanwhile is kept."""
    with _temporary_beside(path) as temporary:
        _write_new_file(temporary, text)
        with contextlib.suppress(FileExistsError):
            os.link(temporary, path)


def _read_json(path: Path, what: str) -> Any:
    """The JSON content of `path`; a ValueError naming it when it is not JSON."""
    try:
        return json.loads(path.read_bytes())
    except ValueError as error:
        raise ValueError(f"{path}: corrupt {what} ({error})") from None


def product_version() -> str:
    """The bundle's version (configs/metadata.json), part of a cohort's identity: another version draws otherwise."""
    return json.loads((BUNDLE_DIR / "configs" / "metadata.json").read_text())["version"]


def cohort_identity(spec: CohortSpec) -> dict[str, Any]:
    """What cohort.json holds: the canonical spec and the product version."""
    return {**spec.to_dict(), "version": product_version()}


def _differences(found: Mapping, expected: Mapping, parent: str = "") -> list[str]:
    """The dotted keys in which `found` differs from `expected`, each with both values."""
    absent = object()
    differences = []
    for key in dict.fromkeys([*expected, *found]):
        theirs, ours = found.get(key, absent), expected.get(key, absent)
        if isinstance(theirs, Mapping) and isinstance(ours, Mapping):
            differences += _differences(theirs, ours, dotted(parent, key))
        elif theirs != ours:
            shown = ["absent" if v is absent else json.dumps(v) for v in (theirs, ours)]
            differences.append(f"{dotted(parent, key)} ({shown[0]} in the folder, {shown[1]} in this spec)")
    return differences


def _is_cohort_file(name: str) -> bool:
    """Whether `name` is cohort.json or the temporary file of one that another rank is writing."""
    return name == COHORT_FILE or (name.startswith(f".{COHORT_FILE}.") and name.endswith(TEMPORARY_SUFFIX))


def _refuse_stray_entries(out: Path) -> None:
    """Refuse a folder with files but no cohort.json: it is no cohort's folder, and a cohort would mix with them."""
    stray = sorted(p.name for p in out.iterdir() if not _is_cohort_file(p.name))
    if stray:
        shown = ", ".join(stray[:5]) + (", ..." if len(stray) > 5 else "")
        raise ValueError(f"{out} holds files but no {COHORT_FILE} ({shown}): use a new or empty folder for a cohort")


def open_cohort(out: Path, spec: CohortSpec) -> None:
    """Make `out` the folder of `spec`'s cohort, or resume it; safe when every rank calls it at once."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / COHORT_FILE
    expected = cohort_identity(spec)
    if not path.exists():
        _refuse_stray_entries(out)
        _publish_once(path, json.dumps(expected, indent=2) + "\n")
    found = _read_json(path, "cohort file")
    if not isinstance(found, dict):
        raise ValueError(f"{path}: corrupt cohort file (not a mapping)")
    differences = _differences(found, expected)
    if differences:
        raise ValueError(f"{out} holds another cohort ({COHORT_FILE}) that differs in {'; '.join(differences)}")


def _check_record(record: Any, source: Path | str) -> dict:
    """`record` if it is a mapping of exactly PATIENT_RECORD_KEYS, so the manifest has every column."""
    if not isinstance(record, dict):
        raise ValueError(f"{source}: a patient record must be a mapping, got {type(record).__name__}")
    missing = [k for k in PATIENT_RECORD_KEYS if k not in record]
    unknown = [str(k) for k in record if k not in PATIENT_RECORD_KEYS]
    if missing or unknown:
        raise ValueError(f"{source}: patient record keys missing: {missing}, unknown: {unknown}")
    return record


def write_patient_record(folder: Path, record: dict) -> None:
    """Write `folder`/patient.json atomically: its presence is what marks the patient finished."""
    path = Path(folder) / PATIENT_FILE
    _check_record(record, path)
    _write_atomically(path, json.dumps(record, indent=2, allow_nan=False) + "\n")


def read_patient_record(folder: Path) -> dict | None:
    """The record of the patient in `folder`, or None when it is not finished (no patient.json)."""
    path = Path(folder) / PATIENT_FILE
    if not path.exists():
        return None
    return _check_record(_read_json(path, "patient record"), path)


def _manifest_cell(value: Any) -> Any:
    """A record value as its manifest cell: lists ';'-joined, None empty."""
    if isinstance(value, list):
        return ";".join(str(v) for v in value)
    return "" if value is None else value


def write_manifest(out: Path, plans: list[PatientPlan]) -> Path:
    """Write `out`/manifest.csv atomically, one row per patient record in plan order, once every patient is done."""
    out = Path(out)
    records = {plan.patient_id: read_patient_record(out / plan.patient_id) for plan in plans}
    missing = [patient_id for patient_id, record in records.items() if record is None]
    if missing:
        raise ValueError(
            f"{out}: no manifest while {len(missing)} of {len(plans)} patients are unfinished: {', '.join(missing)}"
        )
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=PATIENT_RECORD_KEYS)
    writer.writeheader()
    writer.writerows({k: _manifest_cell(v) for k, v in record.items()} for record in records.values())
    path = out / MANIFEST_FILE
    _write_atomically(path, table.getvalue())
    return path
