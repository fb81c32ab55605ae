"""Ingestion of what clinics and archives export: blanked UIDs, compressed slices, weak references, other studies.

A phantom DICOM tree is ingested as written (the reference); a copy gets one kind of export per patient, made by
editing its files (GDCM encodes JPEG 2000, JPEG lossless and JPEG-LS; pydicom RLE and deflate), and is ingested
once. Each converted patient is compared with its plain twin.
"""

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import gdcm
import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate
from pydicom.uid import (
    JPEG2000,
    MPEG2MPML,
    DeflatedExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessP14,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from scripts.data.labels import LABELS
from scripts.dicom.index import UnreadableDicom, read_header
from scripts.dicom.ingest import ingest
from scripts.phantoms.dicom_tree import write_phantom_dicom

SEED, SIZE, N = 2, 48, 15
#: Lossless compressed patients and their transfer syntax.
LOSSLESS = {
    "PHANTOM-002": JPEGLosslessSV1,
    "PHANTOM-003": JPEGLosslessP14,
    "PHANTOM-004": JPEGLSLossless,
    "PHANTOM-005": RLELossless,
    "PHANTOM-006": DeflatedExplicitVRLittleEndian,
}
#: GDCM's name of each transfer syntax it encodes here.
GDCM_SYNTAX = {
    JPEG2000Lossless: gdcm.TransferSyntax.JPEG2000Lossless,
    JPEG2000: gdcm.TransferSyntax.JPEG2000,
    JPEGLosslessSV1: gdcm.TransferSyntax.JPEGLosslessProcess14_1,
    JPEGLosslessP14: gdcm.TransferSyntax.JPEGLosslessProcess14,
    JPEGLSLossless: gdcm.TransferSyntax.JPEGLSLossless,
}
#: Patients whose CT is stored in a transfer syntax nothing here decodes.
UNDECODABLE = {"PHANTOM-014": (MPEG2MPML, "MPEG2 Main Profile / Main Level"), "PHANTOM-015": ("1.2.3.4.5.6", "unknown")}
#: JPEG 2000 compression ratio of the lossy patient: about 9 HU off on average.
LOSSY_RATE = 4.0
#: HU added to the decoy CT series, so a wrong choice of CT shows in the HU.
DECOY_HU = 200


def by_modality(folder: Path) -> dict[str, list[Path]]:
    """A patient's DICOM files by Modality, in path order."""
    found: dict[str, list[Path]] = {}
    for path in sorted(folder.rglob("*.dcm")):
        found.setdefault(pydicom.dcmread(path, stop_before_pixels=True).Modality, []).append(path)
    return found


def edit(path: Path, change: Callable[[pydicom.Dataset], None]) -> None:
    """Read a DICOM file, change it, write it back as read (file meta kept)."""
    dataset = pydicom.dcmread(path)
    change(dataset)
    dataset.save_as(path)


def gdcm_compress(path: Path, syntax: str, rate: float | None = None) -> None:
    """Re-encode a file's pixel data in place with GDCM; `rate` (compression ratio) makes JPEG 2000 lossy."""
    reader = gdcm.ImageReader()
    reader.SetFileName(str(path))
    assert reader.Read()
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(GDCM_SYNTAX[syntax]))
    change.SetInput(reader.GetImage())
    if rate is not None:
        codec = gdcm.JPEG2000Codec()
        codec.SetRate(0, rate)
        change.SetUserCodec(codec)
    assert change.Change()
    writer = gdcm.ImageWriter()
    writer.SetFileName(str(path))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    assert writer.Write()


def pydicom_compress(syntax: str) -> Callable[[pydicom.Dataset], None]:
    """An edit storing the pixel data RLE compressed, or the whole data set deflated."""

    def change(dataset: pydicom.Dataset) -> None:
        if syntax == RLELossless:
            dataset.compress(RLELossless)
        else:
            dataset.file_meta.TransferSyntaxUID = syntax

    return change


def anonymise(dataset: pydicom.Dataset) -> None:
    """Blank (CT) or drop (RTSTRUCT, SEG) the instance, series and study UIDs and the PatientID; file meta kept."""
    for keyword in ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "PatientID"):
        if dataset.Modality == "CT":
            setattr(dataset, keyword, "")
        else:
            delattr(dataset, keyword)


def encapsulated_as(syntax: str) -> Callable[[pydicom.Dataset], None]:
    """An edit storing the pixel data encapsulated under a transfer syntax that is not really its encoding."""

    def change(dataset: pydicom.Dataset) -> None:
        dataset.PixelData = encapsulate([dataset.PixelData])
        dataset["PixelData"].VR, dataset["PixelData"].is_undefined_length = "OB", True
        dataset.file_meta.TransferSyntaxUID = syntax

    return change


def write_decoy(ct: list[Path], series_uid: str, frame: str | None) -> None:
    """Copy a CT series beside it as another series (new instance UIDs, `DECOY_HU` brighter), in `frame` if given."""
    folder = ct[0].parent.with_name("9.000000-decoy")
    folder.mkdir()
    for path in ct:
        dataset = pydicom.dcmread(path)
        dataset.PixelData = (dataset.pixel_array + DECOY_HU).astype(np.uint16).tobytes()
        dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        dataset.SeriesInstanceUID = series_uid
        dataset.FrameOfReferenceUID = frame or dataset.FrameOfReferenceUID
        dataset.save_as(folder / path.name)


def frame_only(in_sequence: bool) -> Callable[[pydicom.Dataset], None]:
    """An edit leaving an RTSTRUCT no reference but its frame: in ReferencedFrameOfReferenceSequence, else in its ROIs."""

    def change(dataset: pydicom.Dataset) -> None:
        if "FrameOfReferenceUID" in dataset:
            del dataset.FrameOfReferenceUID
        for frame in dataset.ReferencedFrameOfReferenceSequence:
            del frame.RTReferencedStudySequence
        if not in_sequence:
            del dataset.ReferencedFrameOfReferenceSequence

    return change


def make_exports(root: Path) -> dict[str, str]:
    """Give each patient of the tree at `root` its kind of export; returns the CT series UIDs the tests expect."""
    f = {case.name: by_modality(case) for case in sorted(root.iterdir())}
    for path in f["PHANTOM-001"]["CT"]:
        gdcm_compress(path, JPEG2000Lossless)
    for path in [p for paths in f["PHANTOM-001"].values() for p in paths]:
        edit(path, anonymise)
    for case, syntax in LOSSLESS.items():
        for path in f[case]["CT"]:
            if syntax in GDCM_SYNTAX:
                gdcm_compress(path, syntax)
            else:
                edit(path, pydicom_compress(syntax))
    for path in f["PHANTOM-007"]["CT"]:
        gdcm_compress(path, JPEG2000, rate=LOSSY_RATE)
    for path in f["PHANTOM-008"]["CT"]:
        edit(path, lambda d: setattr(d, "LossyImageCompression", "01"))
    for case in ("PHANTOM-009", "PHANTOM-010", "PHANTOM-011"):
        write_decoy(f[case]["CT"], generate_uid(), generate_uid())
    for case in ("PHANTOM-009", "PHANTOM-010"):
        f[case]["SEG"][0].unlink()
    edit(f["PHANTOM-009"]["RTSTRUCT"][0], frame_only(in_sequence=True))
    edit(f["PHANTOM-010"]["RTSTRUCT"][0], frame_only(in_sequence=False))
    f["PHANTOM-011"]["RTSTRUCT"][0].unlink()
    edit(f["PHANTOM-011"]["SEG"][0], lambda d: delattr(d, "ReferencedSeriesSequence"))
    for path in f["PHANTOM-012"]["CT"]:
        edit(path, lambda d: d.update({"SeriesInstanceUID": "", "SOPInstanceUID": ""}))
    write_decoy(f["PHANTOM-012"]["CT"], "", None)
    for path in f["PHANTOM-013"]["RTSTRUCT"] + f["PHANTOM-013"]["SEG"]:
        edit(path, lambda d: setattr(d, "StudyInstanceUID", generate_uid()))
    for case, (syntax, _) in UNDECODABLE.items():
        for path in f[case]["CT"]:
            edit(path, encapsulated_as(syntax))
    return {case: pydicom.dcmread(f[case]["CT"][0]).SeriesInstanceUID for case in f}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> SimpleNamespace:
    """The plain tree and its edited copy, each ingested once."""
    root = tmp_path_factory.mktemp("real_world")
    write_phantom_dicom(str(root / "plain"), n=N, size=SIZE, seed=SEED)
    shutil.copytree(root / "plain", root / "exports")
    series = make_exports(root / "exports")
    reports = {
        tree: json.loads(Path(ingest(str(root / tree), str(root / f"{tree}-cases"), workers=1)).read_text())
        for tree in ("plain", "exports")
    }
    return SimpleNamespace(root=root, series=series, report=reports["exports"], plain=reports["plain"])


def converted(runs, case: str) -> dict:
    """The record of a converted patient of the edited tree (fails when it was excluded)."""
    assert case in runs.report["converted"], runs.report["excluded"].get(case)
    return runs.report["converted"][case]


def volumes(runs, case: str, name: str) -> tuple[np.ndarray, np.ndarray]:
    """One NIfTI file of a case from the edited tree and of its plain twin, checked to share one world grid."""
    images = [nib.load(runs.root / f"{tree}-cases" / case / name) for tree in ("exports", "plain")]
    np.testing.assert_allclose(images[0].affine, images[1].affine, atol=1e-3)
    assert images[0].shape == images[1].shape
    return tuple(np.asanyarray(image.dataobj).astype(np.int32) for image in images)


def assert_same_as_plain(runs, case: str) -> None:
    """The case's HU within 1 of its plain twin's, and each structure of the twin back with Dice >= 0.95."""
    ct, plain_ct = volumes(runs, case, "ct.nii.gz")
    assert np.abs(ct - plain_ct).max() <= 1
    label, plain_label = volumes(runs, case, "label.nii.gz")
    structures = [name for name, value in LABELS.items() if value and (plain_label == value).any()]
    assert len(structures) >= 4
    for name in structures:
        a, b = label == LABELS[name], plain_label == LABELS[name]
        assert 2 * (a & b).sum() / (a.sum() + b.sum()) >= 0.95, name


def test_the_plain_tree_converts_whole(runs):
    assert runs.plain["summary"] == {"converted": N, "kept": 0, "excluded": 0}


def test_anonymised_jpeg2000_export_converts_like_the_plain_one(runs):
    ct = pydicom.dcmread(by_modality(runs.root / "exports" / "PHANTOM-001")["CT"][0])
    assert ct.file_meta.TransferSyntaxUID == JPEG2000Lossless and ct.SOPInstanceUID == ct.SeriesInstanceUID == ""
    record = converted(runs, "PHANTOM-001")
    assert_same_as_plain(runs, "PHANTOM-001")
    grouped = {w.split()[0]: w for w in record["warnings"] if "lack SeriesInstanceUID: grouped by modality" in w}
    assert sorted(grouped) == ["CT", "RTSTRUCT", "SEG"]
    assert record["ct"]["series_uid"] in grouped["CT"] and record["ct"]["study_uid"] == ""
    assert any("PatientID is empty" in w for w in record["warnings"])
    assert not any("lossily" in w for w in record["warnings"]), "JPEG 2000 lossless is not lossy"


@pytest.mark.parametrize("case", sorted(LOSSLESS))
def test_lossless_compressed_slices_give_the_plain_hu(runs, case):
    first = by_modality(runs.root / "exports" / case)["CT"][0]
    assert pydicom.dcmread(first, stop_before_pixels=True).file_meta.TransferSyntaxUID == LOSSLESS[case]
    ct, plain_ct = volumes(runs, case, "ct.nii.gz")
    assert np.array_equal(ct, plain_ct)
    assert not any("lossily" in w for w in converted(runs, case)["warnings"])


@pytest.mark.parametrize(
    "case, why",
    [
        ("PHANTOM-007", f"transfer syntax JPEG 2000 Image Compression ({JPEG2000})"),
        ("PHANTOM-008", "LossyImageCompression 01 in {n} of {n} slices"),
    ],
)
def test_lossy_ct_converts_with_a_warning(runs, case, why):
    record = converted(runs, case)
    warning = f"CT slices may be lossily compressed ({why.format(n=record['ct']['slices'])}): HU may differ"
    assert any(w.startswith(warning) for w in record["warnings"]), record["warnings"]
    ct, plain_ct = volumes(runs, case, "ct.nii.gz")
    error = np.abs(ct - plain_ct).mean()
    assert (0 < error < 20) if case == "PHANTOM-007" else error == 0


@pytest.mark.parametrize("case", ["PHANTOM-009", "PHANTOM-010", "PHANTOM-011"])
def test_a_structure_set_naming_only_its_frame_picks_the_ct_in_that_frame(runs, case):
    record = converted(runs, case)
    assert record["ct"]["series_uid"] == runs.series[case]
    assert sum("not referenced by the RTSTRUCT/SEG; ignored" in w for w in record["warnings"]) == 1
    assert_same_as_plain(runs, case)


def test_a_blanked_ct_series_is_found_by_the_slices_the_structure_sets_name(runs):
    record = converted(runs, "PHANTOM-012")
    assert sum("lack SeriesInstanceUID" in w for w in record["warnings"]) == 2, "the CT and its decoy"
    assert sum("not referenced by the RTSTRUCT/SEG; ignored" in w for w in record["warnings"]) == 1
    assert_same_as_plain(runs, "PHANTOM-012")


def test_structure_sets_of_another_study_convert(runs):
    record = converted(runs, "PHANTOM-013")
    assert {s["source"] for s in record["structures"].values()} == {"RTSTRUCT"}
    assert all([a["source"] for a in s["also_in"]] == ["SEG"] for s in record["structures"].values())
    assert_same_as_plain(runs, "PHANTOM-013")


@pytest.mark.parametrize("case", sorted(UNDECODABLE))
def test_an_undecodable_transfer_syntax_is_an_exclusion_naming_it(runs, case):
    syntax, name = UNDECODABLE[case]
    reason = runs.report["excluded"][case]["reason"]
    assert f"transfer syntax {name} ({syntax}) cannot be decoded" in reason, reason


def test_the_instance_uid_comes_from_the_file_meta_else_the_file_is_unreadable(runs, tmp_path):
    slice_ = by_modality(runs.root / "exports" / "PHANTOM-001")["CT"][0]
    dataset = pydicom.dcmread(slice_)
    assert read_header(slice_).sop_instance_uid == dataset.file_meta.MediaStorageSOPInstanceUID != ""
    del dataset.file_meta.MediaStorageSOPInstanceUID, dataset.Modality
    dataset.save_as(tmp_path / "bare.dcm")
    with pytest.raises(UnreadableDicom, match="lacks Modality, SOPInstanceUID and MediaStorageSOPInstanceUID"):
        read_header(tmp_path / "bare.dcm")
