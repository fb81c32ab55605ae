"""`python -m scripts ingest`: a DICOM tree (NSCLC-Radiomics, or a clinic's export) to checked NIfTI cases.

Writes `DST/<case>/ct.nii.gz` (int16 HU), `label.nii.gz` (uint8 ids of scripts.labels, same grid, RAS voxel
order), `ingest.json` (where each structure came from), then `DST/report.json` and `DST/datalist.json`.
What happens to each kind of input is listed in docs/ingest.md.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
from tqdm import tqdm

from scripts.data.datalist import split_cases, write_datalist
from scripts.data.staging import remove_leftovers, staged_folder
from scripts.data.volumes import write_nifti
from scripts.dicom.grid import Grid, reorient
from scripts.dicom.index import DicomFile, Patient, Series, group, list_files, read_headers
from scripts.dicom.roi_names import RoiNames, load_roi_names
from scripts.dicom.rtstruct import read_rtstruct
from scripts.dicom.seg import read_seg
from scripts.dicom.series import SeriesError, check_series, lossy_warning, read_hu
from scripts.dicom.structures import StructureSet, label_map, merge

logger = logging.getLogger(__name__)

#: Per-case record of where the CT and each structure came from, written with the case.
RECORD = "ingest.json"
#: Structure sources by Modality (`prefer` names one, in any case).
READERS = {"RTSTRUCT": read_rtstruct, "SEG": read_seg}
#: Files per header-reading task.
CHUNK = 64


class Exclusion(ValueError):
    """A patient that cannot become a case; the message is the reason written to report.json."""


@dataclass
class Outcome:
    """What became of one patient: `converted`, `kept` (finished by an earlier run) or `excluded`, with details."""

    case: str
    status: str
    details: dict


@dataclass
class _Notes:
    """What converting one patient noticed along the way."""

    warnings: list[str] = field(default_factory=list)
    unmapped: list[str] = field(default_factory=list)


def case_names(patient_ids: list[str]) -> dict[str, str | None]:
    """A folder name per patient id (characters other than letters, digits, '.', '_', '-' become '_'); None on a clash."""
    names: dict[str, str | None] = {}
    taken: set[str] = set()
    for patient_id in sorted(patient_ids):
        name = re.sub(r"[^A-Za-z0-9._-]+", "_", patient_id).strip("._") or "patient"
        names[patient_id] = None if name in taken else name
        taken.add(name)
    return names


def _referenced_cts(cts: list[Series], sources: list[Series]) -> list[Series]:
    """The CT series the structure sets reference: by series UID, else by slice UIDs, else by frame of reference.

    Anonymised exports may blank or replace the CT's SeriesInstanceUID while the RTSTRUCT/SEG keep the original,
    and some structure sets name only their frame of reference, so each weaker reference is tried in turn.
    """
    series = set().union(*(s.referenced_series for s in sources))
    instances = set().union(*(s.referenced_instances for s in sources))
    frames = set().union(*(s.frames_of_reference for s in sources)) - {""}
    return (
        [c for c in cts if c.uid in series]
        or [c for c in cts if any(f.sop_instance_uid in instances for f in c.files)]
        or [c for c in cts if c.frames_of_reference & frames]
    )


def _choose_ct(patient: Patient, sources: list[Series], notes: _Notes) -> Series:
    """The patient's CT series: the only one, else the one its structure sets reference."""
    cts = patient.of_modality("CT")
    if not cts:
        found = sorted({s.modality for s in patient.series})
        raise Exclusion(f"no CT series (found {', '.join(found)})")
    if len(cts) == 1:
        return cts[0]
    candidates = _referenced_cts(cts, sources)
    if len(candidates) != 1:
        raise Exclusion(
            f"{len(cts)} CT series and {len(candidates) or 'none'} of them referenced by the RTSTRUCT/SEG: "
            + ", ".join(c.uid for c in cts)
        )
    notes.warnings += [
        f"CT series {c.uid} not referenced by the RTSTRUCT/SEG; ignored" for c in cts if c is not candidates[0]
    ]
    return candidates[0]


def _read_sources(
    files: list[DicomFile], grid: Grid, names: RoiNames, prefer: str, notes: _Notes
) -> list[StructureSet]:
    """Read every RTSTRUCT and SEG file onto the CT grid, the preferred kind first; a broken file becomes a warning."""
    sets = []
    for file in sorted(files, key=lambda f: (f.modality != prefer, f.path)):
        try:
            structure_set = READERS[file.modality](file.path, grid, names)
        except Exception as error:  # one corrupt structure file must not lose the patient's other sources
            notes.warnings.append(f"{file.path}: unreadable {file.modality} ({type(error).__name__}: {error})")
            continue
        notes.unmapped += structure_set.unmapped
        notes.warnings += structure_set.problems
        sets.append(structure_set)
    return sets


def _write_case(folder: Path, hu: np.ndarray, label: np.ndarray, grid: Grid, record: dict, overwrite: bool) -> None:
    """Write ct.nii.gz, label.nii.gz (both in RAS voxel order, same affine) and the record, all or nothing."""
    ct, affine = reorient(hu, grid.affine_ras, "RAS")
    label, _ = reorient(label, grid.affine_ras, "RAS")
    record["ct"]["shape"] = list(ct.shape)
    record["ct"]["spacing_mm"] = [round(float(s), 4) for s in np.linalg.norm(affine[:3, :3], axis=0)]
    with staged_folder(folder, overwrite) as staging:
        write_nifti(ct, affine, staging / "ct.nii.gz")
        write_nifti(label, affine, staging / "label.nii.gz")
        (staging / RECORD).write_text(json.dumps(record, indent=2) + "\n")


def _convert(patient: Patient, folder: Path, names: RoiNames, prefer: str, overwrite: bool, notes: _Notes) -> dict:
    """Convert one patient into `folder`; returns its record, or raises Exclusion with the reason."""
    if folder.exists() and not overwrite:
        raise Exclusion(f"{folder} exists but was not written by ingest; kept (use --overwrite to replace it)")
    sources = patient.of_modality("RTSTRUCT") + patient.of_modality("SEG")
    ct = _choose_ct(patient, sources, notes)
    if not sources:
        raise Exclusion(f"CT only: no RTSTRUCT or SEG (CT series {ct.uid})")
    try:
        grid, slices = check_series(ct)
    except SeriesError as error:
        raise Exclusion(f"CT series {ct.uid}: {error}") from error
    sets = _read_sources([f for s in sources for f in s.files], grid, names, prefer, notes)
    masks, provenance = merge(sets)
    if not masks:
        unmapped = f"; unmapped ROI names: {', '.join(sorted(set(notes.unmapped)))}" if notes.unmapped else ""
        raise Exclusion(
            f"no usable structure in the RTSTRUCT/SEG: {'; '.join(notes.warnings) or 'none found'}{unmapped}"
        )
    try:
        hu = read_hu(slices)
    except SeriesError as error:
        raise Exclusion(f"CT series {ct.uid}: {error}") from error
    lossy = lossy_warning(slices)
    if lossy:
        notes.warnings.append(lossy)
    if "gtv_1" not in masks:
        notes.warnings.append("no GTV-1 (primary tumor) among the structures")
    record = {
        "patient_id": patient.patient_id,
        "ct": {"series_uid": ct.uid, "study_uid": ct.study_uid, "slices": len(slices)},
        "structures": provenance,
        "unmapped_roi_names": sorted(set(notes.unmapped)),
        "warnings": notes.warnings,
    }
    _write_case(folder, hu, label_map(masks, grid.shape), grid, record, overwrite)
    return record


def convert_patient(
    item: tuple[Patient, str | None], dst: Path, names: RoiNames, prefer: str, overwrite: bool
) -> Outcome:
    """Convert one (patient, case folder name) pair, or say why not; never raises, so one patient never stops the batch."""
    patient, case = item
    notes = _Notes(warnings=list(patient.warnings))
    if case is None:
        reason = "its folder name clashes with another patient's (PatientIDs differing only in odd characters)"
        return Outcome(patient.patient_id, "excluded", {"patient_id": patient.patient_id, "reason": reason})
    record_path = dst / case / RECORD
    try:
        if record_path.is_file() and not overwrite:
            return Outcome(case, "kept", json.loads(record_path.read_text()))
        return Outcome(case, "converted", _convert(patient, dst / case, names, prefer, overwrite, notes))
    except Exclusion as error:
        reason = str(error)
    except Exception as error:  # an unforeseen fault in one patient's files must not stop the batch
        reason = f"unexpected {type(error).__name__}: {error}"
    details = {"patient_id": patient.patient_id, "reason": reason, "warnings": notes.warnings}
    return Outcome(case, "excluded", {**details, "unmapped_roi_names": sorted(set(notes.unmapped))})


@contextmanager
def _mapper(workers: int) -> Iterator[Callable]:
    """A `map` that runs in `workers` processes, or in this process for one worker."""
    if workers == 1:
        yield map
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        yield pool.map


def _write_json(path: Path, content: dict) -> None:
    """Write JSON under a temporary name, then move it into place."""
    partial_path = path.with_name(path.name + ".partial")
    partial_path.write_text(json.dumps(content, indent=2) + "\n")
    os.replace(partial_path, path)


def _report(src: Path, outcomes: list[Outcome], index_notes: dict) -> dict:
    """The batch report: converted (and kept) cases with their records, excluded ones with reasons, unmapped names."""
    unmapped: dict[str, list[str]] = {}
    for outcome in outcomes:
        for name in outcome.details.get("unmapped_roi_names", []):
            unmapped.setdefault(name, []).append(outcome.case)
    done = {o.case: o.details for o in outcomes if o.status != "excluded"}
    return {
        "source": str(src),
        "summary": {status: sum(o.status == status for o in outcomes) for status in ("converted", "kept", "excluded")},
        "converted": done,
        "kept": sorted(o.case for o in outcomes if o.status == "kept"),
        "excluded": {o.case: o.details for o in outcomes if o.status == "excluded"},
        "unmapped_roi_names": dict(sorted(unmapped.items())),
        **index_notes,
    }


def ingest(
    src: str,
    dst: str,
    workers: int | None = None,
    overwrite: bool = False,
    roi_map: str | None = None,
    prefer: str = "rtstruct",
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.05,
) -> str:
    """Convert the DICOM tree under `src` into NIfTI cases under `dst`, with report.json and datalist.json.

    Files are grouped by their tags (PatientID, SeriesInstanceUID, Modality, FrameOfReferenceUID), never by folder
    names, unless an anonymiser blanked the PatientID or SeriesInstanceUID. A patient needs a CT series and at
    least one RTSTRUCT or SEG; each structure is taken from the preferred kind of source when both give it
    (report.json says which file and ROIs gave it). Patients that cannot be converted are listed in report.json
    with the reason; the others still convert.

    Args:
        src: root of the DICOM tree (e.g. the NSCLC-Radiomics download).
        dst: output folder: `<case>/ct.nii.gz`, `<case>/label.nii.gz`, `report.json`, `datalist.json`.
        workers: processes converting patients in parallel (default: one per CPU core).
        overwrite: convert again the patients an earlier run finished (default: keep them).
        roi_map: a JSON file of extra ROI name patterns (format of configs/roi_names.json), tried first.
        prefer: `rtstruct` or `seg`: which source gives a structure that both hold.
        seed: seed of the datalist's train/validation/test split.
        val_fraction: share of the cases in the validation split.
        test_fraction: share of the cases in the test split (5% as in the thesis; the rest trains).
    """
    source, root = Path(src).resolve(), Path(dst).resolve()
    if not source.is_dir():
        raise ValueError(f"src: {src} is not a folder")
    workers = (os.cpu_count() or 1) if workers is None else int(workers)
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    preferred = str(prefer).upper()
    if preferred not in READERS:
        raise ValueError(f"prefer must be rtstruct or seg, got {prefer!r}")
    split_cases([], seed, val_fraction, test_fraction)  # refuse bad fractions before any work
    names = load_roi_names(roi_map)
    root.mkdir(parents=True, exist_ok=True)
    leftovers = remove_leftovers(root)
    paths = [p for p in list_files(source) if root not in p.parents]
    chunks = [paths[i : i + CHUNK] for i in range(0, len(paths), CHUNK)]
    with _mapper(workers) as mapper:
        headers = [
            h
            for chunk in tqdm(mapper(read_headers, chunks), total=len(chunks), desc="headers", unit="chunk")
            for h in chunk
        ]
        index = group(source, paths, headers)
        folders = case_names(list(index.patients))
        convert = partial(convert_patient, dst=root, names=names, prefer=preferred, overwrite=overwrite)
        items = [(index.patients[p], folders[p]) for p in sorted(index.patients)]
        outcomes = list(tqdm(mapper(convert, items), total=len(items), desc="patients", unit="patient"))
    index_notes = {
        "unreadable_files": index.unreadable,
        "not_dicom_files": index.not_dicom,
        "warnings": index.warnings + [f"removed {p}, left by an interrupted run" for p in leftovers],
    }
    report = _report(source, outcomes, index_notes)
    _write_json(root / "report.json", report)
    cases = sorted(o.case for o in outcomes if o.status != "excluded")
    write_datalist(root, cases, seed=seed, val_fraction=val_fraction, test_fraction=test_fraction)
    logger.info("ingest: %s; report in %s", report["summary"], root / "report.json")
    return str(root / "report.json")
