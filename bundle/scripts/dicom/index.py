"""Find DICOM files under a folder and group them into patients and series by their tags, never by folder names.

Only headers are read here (no pixel data). A file is DICOM when it carries the `DICM` prefix, or when it has no
file meta header (as some exports and pydicom's own `rtstruct.dcm`) but starts with a group 0008 element and
reads as a dataset with a SOP Class. Anything else is not DICOM and is ignored; DICOM that cannot be read, or
lacks a Modality or any instance UID, is reported as unreadable. Anonymised exports often blank UIDs in the data
set: the file meta's MediaStorageSOPInstanceUID stands in for an empty SOPInstanceUID, and files without a
SeriesInstanceUID are grouped by what one series shares (modality, frame of reference, orientation, pixel spacing,
size and folder).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

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
    "LossyImageCompression",
    "ReferencedFrameOfReferenceSequence",
    "ReferencedSeriesSequence",
    "StructureSetROISequence",
)
#: Decimals kept of orientation and pixel spacing when they group files that lack a SeriesInstanceUID.
GROUPING_DECIMALS = 4


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
    referenced_instances: tuple[str, ...] = ()
    transfer_syntax: str = ""
    lossy: bool = False
    position: tuple[float, ...] | None = None
    orientation: tuple[float, ...] | None = None
    pixel_spacing: tuple[float, ...] | None = None
    rows: int = 0
    columns: int = 0
    frames: int = 1


@dataclass
class Series:
    """The files of one series of a patient (by SeriesInstanceUID, else by what they share), duplicates dropped."""

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

    @property
    def referenced_instances(self) -> set[str]:
        """SOPInstanceUIDs its files point at (the CT slices an RTSTRUCT or SEG was drawn on)."""
        return {uid for f in self.files for uid in f.referenced_instances}


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


def _uids(items: Iterable[Dataset], keyword: str) -> tuple[str, ...]:
    """The non-empty values of one UID tag across sequence items (anonymisers blank or drop some)."""
    return tuple(uid for uid in (str(item.get(keyword, "") or "") for item in items) if uid)


def _referenced(dataset: Dataset) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
    """An RTSTRUCT's or SEG's frame of reference, and the series and instances (CT slices) it references."""
    frames = list(dataset.get("ReferencedFrameOfReferenceSequence", []))
    series = [
        item
        for frame in frames
        for study in frame.get("RTReferencedStudySequence", [])
        for item in study.get("RTReferencedSeriesSequence", [])
    ] + list(dataset.get("ReferencedSeriesSequence", []))
    images = [
        image
        for item in series
        for image in [*item.get("ContourImageSequence", []), *item.get("ReferencedInstanceSequence", [])]
    ]
    frame_uids = (
        _uids([dataset], "FrameOfReferenceUID")
        + _uids(frames, "FrameOfReferenceUID")
        + _uids(dataset.get("StructureSetROISequence", []), "ReferencedFrameOfReferenceUID")
    )
    own = frame_uids[0] if frame_uids else ""
    return own, _uids(series, "SeriesInstanceUID"), _uids(images, "ReferencedSOPInstanceUID")


def _fields(path: Path, dataset: Dataset) -> DicomFile:
    """The header fields ingestion uses, converted; errors on malformed values or a lacking Modality or instance UID."""
    meta = getattr(dataset, "file_meta", None) or Dataset()
    instance = str(dataset.get("SOPInstanceUID", "") or meta.get("MediaStorageSOPInstanceUID", "") or "")
    missing = [
        name
        for name, value in (
            ("Modality", dataset.get("Modality")),
            ("SOPInstanceUID and MediaStorageSOPInstanceUID", instance),
        )
        if not value
    ]
    if missing:
        raise UnreadableDicom(f"incomplete header: lacks {', '.join(missing)}")
    frame_of_reference, series, instances = _referenced(dataset)
    return DicomFile(
        path=str(path),
        patient_id=str(dataset.get("PatientID", "") or "").strip(),
        study_uid=str(dataset.get("StudyInstanceUID", "") or ""),
        series_uid=str(dataset.get("SeriesInstanceUID", "") or ""),
        modality=str(dataset.Modality).upper(),
        frame_of_reference=frame_of_reference,
        sop_instance_uid=instance,
        referenced_series=series,
        referenced_instances=instances,
        transfer_syntax=str(meta.get("TransferSyntaxUID", "") or ""),
        lossy=str(dataset.get("LossyImageCompression", "") or "").strip() == "01",
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


def _series_uid(patient_id: str, path: Path, header: DicomFile) -> tuple[str, str | None]:
    """The file's SeriesInstanceUID; when it is empty, one made from what a series shares, with a warning to give."""
    if header.series_uid:
        return header.series_uid, None
    rounded = [
        None if v is None else tuple(round(x, GROUPING_DECIMALS) for x in v)
        for v in (header.orientation, header.pixel_spacing)
    ]
    shared = (header.modality, header.frame_of_reference, *rounded, header.rows, header.columns, str(path.parent))
    uid = generate_uid(entropy_srcs=[patient_id, *map(str, shared)])
    return uid, (
        f"{header.modality} files in {path.parent} lack SeriesInstanceUID: grouped by modality, frame of reference, "
        f"orientation, pixel spacing, size and folder as series {uid}"
    )


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
        uid, synthesized = _series_uid(patient_id, path, header)
        key = (patient_id, uid)
        if key not in series:
            series[key] = Series(uid, header.modality, header.study_uid)
            patient.series.append(series[key])
            patient.warnings += [synthesized] if synthesized else []
        series[key].files.append(header)
    for patient_id, note in from_folder.items():
        index.patients[patient_id].warnings.append(note)
    for patient in index.patients.values():
        patient.series.sort(key=lambda s: s.uid)
    return index
