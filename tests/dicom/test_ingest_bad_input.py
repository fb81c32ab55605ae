"""Ingestion of broken and odd DICOM: each patient gets its documented outcome in report.json, the others still convert.

One tree holds a patient per kind of trouble, made by editing phantom DICOM files with pydicom, plus pydicom's own
`rtstruct.dcm` (no file meta header) and `CT_small.dcm` (a single slice); it is ingested once.
"""

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from scripts.data.labels import LABELS
from scripts.dicom.ingest import ingest
from scripts.dicom.roi_names import load_roi_names
from scripts.phantoms.dicom_tree import write_phantom_dicom

#: Case -> (what is wrong, expected status).
CASES = {
    "PHANTOM-001": ("control, with non-DICOM files beside its slices", "converted"),
    "PHANTOM-002": ("a truncated CT slice", "excluded"),
    "PHANTOM-003": ("CT only", "excluded"),
    "PHANTOM-004": ("RTSTRUCT in another frame of reference, no SEG", "excluded"),
    "PHANTOM-005": ("RTSTRUCT in another frame of reference, SEG fine", "converted"),
    "PHANTOM-006": ("an empty ROI", "converted"),
    "PHANTOM-007": ("an unknown ROI name", "converted"),
    "PHANTOM-008": ("a missing slice", "excluded"),
    "PHANTOM-009": ("a duplicate slice", "excluded"),
    "PHANTOM-010": ("uneven slice spacing", "excluded"),
    "PHANTOM-011": ("gantry tilt", "excluded"),
    "PHANTOM-012": ("mixed orientations", "excluded"),
    "PHANTOM-013": ("empty PatientID", "converted"),
    "PHANTOM-014": ("GTV contours half a slice off the CT slices, no SEG", "converted"),
    "tPhantom30sep": ("pydicom's rtstruct.dcm alone", "excluded"),
    "1CT1": ("pydicom's single-slice CT_small.dcm with an RTSTRUCT", "excluded"),
}


def files_of(folder: Path) -> dict[str, list[Path]]:
    """A patient's DICOM files by Modality, found by their tags; CT slices from the feet up."""
    found: dict[str, list[tuple[float, Path]]] = {}
    for path in sorted(folder.rglob("*.dcm")):
        dataset = pydicom.dcmread(path, stop_before_pixels=True)
        z = float(dataset.ImagePositionPatient[2]) if dataset.Modality == "CT" else 0.0
        found.setdefault(dataset.Modality, []).append((z, path))
    return {modality: [p for _, p in sorted(items)] for modality, items in found.items()}


def edit(path: Path, change: Callable[[pydicom.Dataset], None]) -> None:
    """Read a DICOM file, change it, write it back."""
    dataset = pydicom.dcmread(path)
    change(dataset)
    dataset.save_as(path)


def roi_named(dataset: pydicom.Dataset, structure: str) -> tuple[pydicom.Dataset, pydicom.Dataset]:
    """The (StructureSetROISequence, ROIContourSequence) items of the ROI for one structure, by interpreted name."""
    names = load_roi_names()
    roi = next(r for r in dataset.StructureSetROISequence if names.structure(r.ROIName) == structure)
    contour = next(c for c in dataset.ROIContourSequence if c.ReferencedROINumber == roi.ROINumber)
    return roi, contour


def move_frame(dataset: pydicom.Dataset) -> None:
    """Put every ROI of an RTSTRUCT into a new frame of reference."""
    frame = generate_uid()
    dataset.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID = frame
    for roi in dataset.StructureSetROISequence:
        roi.ReferencedFrameOfReferenceUID = frame


def empty_heart(dataset: pydicom.Dataset) -> None:
    """Remove every contour of the heart ROI."""
    del roi_named(dataset, "heart")[1].ContourSequence


def rename_oesophagus(dataset: pydicom.Dataset) -> None:
    """Give the esophagus ROI a name no pattern knows."""
    roi_named(dataset, "esophagus")[0].ROIName = "Foo-Bar 7"


def lift_gtv(by_mm: float) -> Callable[[pydicom.Dataset], None]:
    """An edit that moves every GTV-1 contour of an RTSTRUCT `by_mm` up."""

    def change(dataset: pydicom.Dataset) -> None:
        for contour in roi_named(dataset, "gtv_1")[1].ContourSequence:
            points = np.asarray(contour.ContourData, float).reshape(-1, 3)
            points[:, 2] += by_mm
            contour.ContourData = [f"{v:.4f}" for v in points.ravel()]

    return change


def shift_slices(files: list[Path], shift: Callable[[int], np.ndarray]) -> None:
    """Move slice k's ImagePositionPatient by shift(k) mm."""
    for k, path in enumerate(files):
        edit(
            path,
            lambda d, k=k: setattr(
                d, "ImagePositionPatient", [float(v) for v in np.add(d.ImagePositionPatient, shift(k))]
            ),
        )


def break_tree(root: Path) -> dict[str, str]:
    """Make each phantom patient's trouble; returns what the tests look for (file names)."""
    f = {case: files_of(root / case) for case in CASES if case.startswith("PHANTOM")}
    (f["PHANTOM-001"]["CT"][0].parent / "README.txt").write_text("not DICOM\n")
    (f["PHANTOM-001"]["CT"][0].parent / "thumbnail.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    (root / "garbage.dcm").write_bytes(bytes(128) + b"DICM" + b"\x02\x00\x10\x00UI\xff\x7f" + bytes(40))
    truncated = f["PHANTOM-002"]["CT"][5]
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size - 1000])
    for case in ("PHANTOM-003", "PHANTOM-004", "PHANTOM-006", "PHANTOM-007", "PHANTOM-014"):
        for path in f[case]["SEG"] + (f[case]["RTSTRUCT"] if case == "PHANTOM-003" else []):
            path.unlink()
    edit(f["PHANTOM-004"]["RTSTRUCT"][0], move_frame)
    edit(f["PHANTOM-005"]["RTSTRUCT"][0], move_frame)
    edit(f["PHANTOM-006"]["RTSTRUCT"][0], empty_heart)
    edit(f["PHANTOM-007"]["RTSTRUCT"][0], rename_oesophagus)
    z = [float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]) for p in f["PHANTOM-014"]["CT"][:2]]
    edit(f["PHANTOM-014"]["RTSTRUCT"][0], lift_gtv((z[1] - z[0]) / 2))
    missing = f["PHANTOM-008"]["CT"][4]
    missing.unlink()
    duplicate = f["PHANTOM-009"]["CT"][3].with_name("copy.dcm")
    shutil.copy(f["PHANTOM-009"]["CT"][3], duplicate)
    edit(duplicate, lambda d: setattr(d, "SOPInstanceUID", generate_uid()))
    shift_slices(f["PHANTOM-010"]["CT"][6:7], lambda k: np.array([0.0, 0.0, 1.5]))
    shift_slices(f["PHANTOM-011"]["CT"], lambda k: np.array([0.0, 0.5 * k, 0.0]))
    edit(f["PHANTOM-012"]["CT"][2], lambda d: setattr(d, "ImageOrientationPatient", [0.98, 0.199, 0, -0.199, 0.98, 0]))
    for path in [p for paths in f["PHANTOM-013"].values() for p in paths]:
        edit(path, lambda d: setattr(d, "PatientID", ""))
    (root / "lonely").mkdir()
    shutil.copy(get_testdata_file("rtstruct.dcm"), root / "lonely" / "rtstruct.dcm")
    small = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    (root / "small").mkdir()
    shutil.copy(get_testdata_file("CT_small.dcm"), root / "small" / "ct.dcm")
    structure_set = pydicom.dcmread(get_testdata_file("rtstruct.dcm"), force=True)
    structure_set.PatientID, structure_set.SOPInstanceUID = small.PatientID, generate_uid()
    structure_set.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID = small.FrameOfReferenceUID
    for roi in structure_set.StructureSetROISequence:
        roi.ReferencedFrameOfReferenceUID = small.FrameOfReferenceUID
    structure_set.save_as(root / "small" / "rtstruct.dcm")
    return {
        "truncated": str(truncated),
        "missing_neighbour": str(f["PHANTOM-008"]["CT"][3]),
        "duplicate": str(duplicate),
    }


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> SimpleNamespace:
    """The broken tree, ingested once."""
    root = tmp_path_factory.mktemp("bad")
    write_phantom_dicom(str(root / "dicom"), n=14, size=32, seed=5)
    files = break_tree(root / "dicom")
    report = json.loads(Path(ingest(str(root / "dicom"), str(root / "cases"), workers=1)).read_text())
    return SimpleNamespace(root=root, report=report, files=files)


def reason(run, case: str) -> str:
    """Why `case` was excluded (fails when it was not)."""
    assert case in run.report["excluded"], f"{case} was not excluded: {run.report['converted'].get(case)}"
    return run.report["excluded"][case]["reason"]


def label_of(run, case: str) -> np.ndarray:
    """A converted case's label map."""
    return np.asanyarray(nib.load(run.root / "cases" / case / "label.nii.gz").dataobj)


def test_each_patient_gets_its_outcome_and_the_others_still_convert(run):
    statuses = {case: "converted" for case in run.report["converted"]} | {
        case: "excluded" for case in run.report["excluded"]
    }
    assert statuses == {case: status for case, (_, status) in CASES.items()}
    datalist = json.loads((run.root / "cases" / "datalist.json").read_text())
    listed = sorted(e["case"] for split in datalist.values() for e in split)
    assert listed == sorted(case for case, (_, status) in CASES.items() if status == "converted")
    assert sorted(p.name for p in (run.root / "cases").iterdir() if p.is_dir()) == listed, (
        "no folder for excluded patients"
    )


def test_non_dicom_files_are_ignored(run):
    assert sorted(Path(p).name for p in run.report["not_dicom_files"]) == ["README.txt", "thumbnail.png"]
    assert set(np.unique(label_of(run, "PHANTOM-001"))) >= {LABELS["gtv_1"], LABELS["lungs"], LABELS["body"]}


def test_unreadable_dicom_is_reported(run):
    assert list(run.report["unreadable_files"]) == [str(run.root / "dicom" / "garbage.dcm")]


def test_truncated_slice_excludes_its_patient_naming_the_file(run):
    text = reason(run, "PHANTOM-002")
    assert run.files["truncated"] in text and "pixel data" in text


def test_ct_only_patient_is_excluded(run):
    assert reason(run, "PHANTOM-003").startswith("CT only: no RTSTRUCT or SEG")


def test_contours_in_another_frame_of_reference_are_refused(run):
    text = reason(run, "PHANTOM-004")
    assert text.startswith("no usable structure in the RTSTRUCT/SEG: ROI '") and "in frame of reference" in text


def test_the_seg_stands_in_for_an_rtstruct_in_another_frame(run):
    record = run.report["converted"]["PHANTOM-005"]
    assert {s["source"] for s in record["structures"].values()} == {"SEG"} and len(record["structures"]) >= 5
    assert len(record["warnings"]) >= len(record["structures"])
    assert all(w.startswith("ROI '") and "in frame of reference" in w for w in record["warnings"])


def test_empty_roi_is_reported_and_left_out(run):
    record = run.report["converted"]["PHANTOM-006"]
    assert any("empty: no closed planar contour" in w and "ROI '" in w for w in record["warnings"])
    assert "heart" not in record["structures"] and not (label_of(run, "PHANTOM-006") == LABELS["heart"]).any()
    assert (label_of(run, "PHANTOM-006") == LABELS["lungs"]).any()


def test_unknown_roi_name_is_listed_as_unmapped(run):
    assert run.report["unmapped_roi_names"] == {"Foo-Bar 7": ["PHANTOM-007"]}
    assert "esophagus" not in run.report["converted"]["PHANTOM-007"]["structures"]
    assert not (label_of(run, "PHANTOM-007") == LABELS["esophagus"]).any()


@pytest.mark.parametrize(
    "case, words",
    [
        ("PHANTOM-008", ["missing slice(s)", "1 slice(s) missing"]),
        ("PHANTOM-009", ["duplicate slices", "copy.dcm"]),
        ("PHANTOM-010", ["uneven slice spacing"]),
        ("PHANTOM-011", ["gantry tilt"]),
        ("PHANTOM-012", ["mixed orientations"]),
    ],
)
def test_irregular_ct_series_are_refused_with_the_reason(run, case, words):
    text = reason(run, case)
    assert text.startswith("CT series ") and all(word in text for word in words), text
    if case == "PHANTOM-008":
        assert run.files["missing_neighbour"] in text


def test_contour_between_ct_slices_is_an_error_for_its_roi(run):
    record = run.report["converted"]["PHANTOM-014"]
    assert "gtv_1" not in record["structures"] and {"lungs", "heart", "body"} <= set(record["structures"])
    assert any(w.startswith("ROI '") and "lies on no CT slice" in w for w in record["warnings"])
    assert "no GTV-1 (primary tumor) among the structures" in record["warnings"]
    assert not (label_of(run, "PHANTOM-014") == LABELS["gtv_1"]).any()


def test_a_user_roi_map_maps_the_unknown_name(run, tmp_path):
    shutil.copytree(run.root / "dicom" / "PHANTOM-007", tmp_path / "dicom" / "PHANTOM-007")
    extra = tmp_path / "names.json"
    extra.write_text(json.dumps({"patterns": {"esophagus": ["foo bar [0-9]+"]}}))
    report = json.loads(
        Path(ingest(str(tmp_path / "dicom"), str(tmp_path / "cases"), workers=1, roi_map=str(extra))).read_text()
    )
    assert report["unmapped_roi_names"] == {} and report["converted"]["PHANTOM-007"]["structures"]["esophagus"][
        "rois"
    ] == ["Foo-Bar 7"]
    assert (
        np.asanyarray(nib.load(tmp_path / "cases" / "PHANTOM-007" / "label.nii.gz").dataobj) == LABELS["esophagus"]
    ).any()


def test_empty_patient_id_takes_the_folder_name(run):
    record = run.report["converted"]["PHANTOM-013"]
    assert record["patient_id"] == "PHANTOM-013" and any("PatientID is empty" in w for w in record["warnings"])


def test_rtstruct_alone_is_read_without_file_meta_and_excluded(run):
    assert reason(run, "tPhantom30sep") == "no CT series (found RTSTRUCT)"


def test_single_slice_series_is_refused(run):
    text = reason(run, "1CT1")
    assert "single-slice series" in text and "ct.dcm" in text
