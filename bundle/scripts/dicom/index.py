"""Find DICOM files under a folder and group them into patients and series by their tags, never by folder names.

Only headers are read here (no pixel data). A file is DICOM when it carries the `DICM` prefix, or when it has no
file meta header (as some exports and pydicom's own `rtstruct.dcm`) but starts with a group 0008 element and
reads as a dataset with a SOP Class. Anything else is not DICOM and is ignored; DICOM that cannot be read, or
lacks the tags that place it in a series, is reported as unreadable.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset

#: Tags read from every file: the grouping keys, and what the readers check before they touch pixels.
HEADER_TAGS = (
    "PatientID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "Modality",
    "FrameOfReferenceUID",
    "SOPClassUID",
    "SOPInstanceUID",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "PixelSpacing",
    "Rows",
    "Columns",
    "NumberOfFrames",
    "ReferencedFrameOfReferenceSequence",
    "ReferencedSeriesSequence",
)

#: Tags without which a DICOM file cannot be placed in a series.
REQUIRED_TAGS = ("SOPInstanceUID", "SeriesInstanceUID", "Modality")


class UnreadableDicom(ValueError):
    """A DICOM file whose header cannot be read or lacks a required tag; the message says which."""


@dataclass(frozen=True)
class DicomFile:
    """Header fields of one DICOM file, read without its pixel data."""

    path: str
    patient_id: str
    study_uid: str
    series_uid: str
    modality: str
    frame_of_reference: str
    sop_instance_uid: str
    referenced_series: tuple[str, ...] = ()
    position: tuple[float, ...] | None = None
    orientation: tuple[float, ...] | None = None
    pixel_spacing: tuple[float, ...] | None = None
    rows: int = 0
    columns: int = 0
    frames: int = 1


@dataclass
class Series:
    """The files of one SeriesInstanceUID within one patient (duplicate instances dropped)."""

    uid: str
    modality: str
    study_uid: str
    files: list[DicomFile] = field(default_factory=list)

    @property
    def frames_of_reference(self) -> set[str]:
        """Every FrameOfReferenceUID its files name (one for a consistent series)."""
        return {f.frame_of_reference for f in self.files}

    @property
    def referenced_series(self) -> set[str]:
        """SeriesInstanceUIDs its files point at (the CT an RTSTRUCT or SEG was drawn on)."""
        return {uid for f in self.files for uid in f.referenced_series}


@dataclass
class Patient:
    """Every series found for one patient id, with what grouping noticed."""

    patient_id: str
    series: list[Series] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def of_modality(self, modality: str) -> list[Series]:
        """Its series of one modality, in SeriesInstanceUID order."""
        return [s for s in self.series if s.modality == modality]


@dataclass
class DicomIndex:
    """Patients found under a folder, and the files left out: not DICOM, or unreadable (with the error)."""

    patients: dict[str, Patient]
    not_dicom: list[str]
    unreadable: dict[str, str]
    warnings: list[str]


def list_files(root: Path) -> list[Path]:
    """Every regular file under `root`, in a stable order (symbolic links to folders are not followed)."""
    found = []
    for folder, subfolders, names in os.walk(root):
        subfolders.sort()
        found += [Path(folder) / name for name in sorted(names)]
    return found


def _dicom_kind(path: Path) -> str | None:
    """From the first bytes: "part10" (the `DICM` prefix), "raw" (no meta header, starts at group 0008) or None."""
    with open(path, "rb") as file:
        head = file.read(132)
    if head[128:132] == b"DICM":
        return "part10"
    return "raw" if head[:2] == b"\x08\x00" else None


def _floats(dataset: Dataset, keyword: str) -> tuple[float, ...] | None:
    """A multi-valued decimal tag as floats, or None when absent or empty."""
    value = dataset.get(keyword)
    return tuple(float(v) for v in value) if value else None


def _referenced(dataset: Dataset) -> tuple[str, tuple[str, ...]]:
    """An RTSTRUCT's or SEG's frame of reference and the series it references."""
    frames = [item.get("FrameOfReferenceUID", "") for item in dataset.get("ReferencedFrameOfReferenceSequence", [])]
    series = [
        str(item.SeriesInstanceUID)
        for frame in dataset.get("ReferencedFrameOfReferenceSequence", [])
        for study in frame.get("RTReferencedStudySequence", [])
        for item in study.get("RTReferencedSeriesSequence", [])
    ] + [
        str(item.SeriesInstanceUID)
        for item in dataset.get("ReferencedSeriesSequence", [])
        if "SeriesInstanceUID" in item
    ]
    own = str(dataset.get("FrameOfReferenceUID", "") or (frames[0] if frames else ""))
    return own, tuple(series)


def _fields(path: Path, dataset: Dataset) -> DicomFile:
    """The header fields ingestion uses, converted; errors on malformed values."""
    missing = [tag for tag in REQUIRED_TAGS if not dataset.get(tag)]
    if missing:
        raise UnreadableDicom(f"incomplete header: lacks {', '.join(missing)}")
    frame_of_reference, referenced = _referenced(dataset)
    return DicomFile(
        path=str(path),
        patient_id=str(dataset.get("PatientID", "") or "").strip(),
        study_uid=str(dataset.get("StudyInstanceUID", "")),
        series_uid=str(dataset.SeriesInstanceUID),
        modality=str(dataset.Modality).upper(),
        frame_of_reference=frame_of_reference,
        sop_instance_uid=str(dataset.SOPInstanceUID),
        referenced_series=referenced,
        position=_floats(dataset, "ImagePositionPatient"),
        orientation=_floats(dataset, "ImageOrientationPatient"),
        pixel_spacing=_floats(dataset, "PixelSpacing"),
        rows=int(dataset.get("Rows", 0) or 0),
        columns=int(dataset.get("Columns", 0) or 0),
        frames=int(dataset.get("NumberOfFrames", 1) or 1),
    )


def read_header(path: Path) -> DicomFile | None:
    """Header fields of `path` without its pixel data; None when it is not DICOM; UnreadableDicom when it is broken."""
    kind = _dicom_kind(path)
    if kind is None:
        return None
    try:
        dataset = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=list(HEADER_TAGS), force=True)
        if kind == "raw" and "SOPClassUID" not in dataset:
            return None
        return _fields(path, dataset)
    except UnreadableDicom:
        raise
    except Exception as error:  # pydicom raises many types on corrupt headers and values; each means the same here
        raise UnreadableDicom(f"header unreadable: {type(error).__name__}: {error}") from error


def read_headers(paths: Sequence[Path]) -> list[DicomFile | str | None]:
    """`read_header` over many files: a DicomFile, None (not DICOM) or the error text (unreadable) for each."""
    results: list[DicomFile | str | None] = []
    for path in paths:
        try:
            results.append(read_header(path))
        except (UnreadableDicom, OSError) as error:
            results.append(str(error))
    return results


def group(root: Path, paths: Sequence[Path], headers: Iterable[DicomFile | str | None]) -> DicomIndex:
    """Group read headers into patients and series; a patient without PatientID is named after its top folder."""
    index = DicomIndex(patients={}, not_dicom=[], unreadable={}, warnings=[])
    series: dict[tuple[str, str], Series] = {}
    seen: dict[str, str] = {}
    from_folder: dict[str, str] = {}
    for path, header in zip(paths, headers):
        if header is None:
            index.not_dicom.append(str(path))
            continue
        if isinstance(header, str):
            index.unreadable[str(path)] = header
            continue
        patient_id = header.patient_id
        if not patient_id:
            top = path.relative_to(root).parts
            if len(top) < 2:
                index.warnings.append(f"{path}: no PatientID and not inside a patient folder; ignored")
                continue
            patient_id = top[0]
            from_folder[patient_id] = f"PatientID is empty; patient id taken from the folder '{patient_id}'"
        if header.sop_instance_uid in seen:
            index.warnings.append(f"{path}: same SOPInstanceUID as {seen[header.sop_instance_uid]}; duplicate ignored")
            continue
        seen[header.sop_instance_uid] = str(path)
        patient = index.patients.setdefault(patient_id, Patient(patient_id))
        key = (patient_id, header.series_uid)
        if key not in series:
            series[key] = Series(header.series_uid, header.modality, header.study_uid)
            patient.series.append(series[key])
        series[key].files.append(header)
    for patient_id, note in from_folder.items():
        index.patients[patient_id].warnings.append(note)
    for patient in index.patients.values():
        patient.series.sort(key=lambda s: s.uid)
    return index
