"""Export for radiotherapy: a synthetic CT and its tumor as a DICOM CT series, RTSTRUCT and SEG."""

import json

import nibabel as nib
import numpy as np
import pydicom
import pytest

from helpers import run_bundle
from helpers.sitk_reference import read_series_ras
from scripts.data.labels import LABELS
from scripts.dicom.export import SYNTHETIC_NOTE, export_dicom
from scripts.dicom.ingest import ingest
from scripts.sampling.tumor_request import mask_from_centre

RECORD = {"image_size": [40, 36, 30], "image_spacing_mm": [6.0, 6.0, 5.0]}


@pytest.fixture
def case(tmp_path):
    """A CT-like HU volume (air, tissue box, lung-like hole) with a tumor mask, off-centre in world space."""
    mask, affine = mask_from_centre(RECORD, [20.0, -10.0, 12.0], 40.0, seed=2)
    affine[:3, 3] += [-31.0, 57.0, 250.0]
    hu = np.full(mask.shape, -1000, np.int16)
    hu[5:35, 4:32, 2:28] = 40
    hu[8:20, 8:28, 5:25] = -850
    hu[mask > 0] = 30
    paths = {"ct": tmp_path / "sample_ct.nii.gz", "mask": tmp_path / "sample_mask.nii.gz"}
    nib.save(nib.Nifti1Image(hu, affine), paths["ct"])
    nib.save(nib.Nifti1Image(mask, affine), paths["mask"])
    return hu, mask, affine, paths


def test_export_ingests_back_to_the_same_ct_and_mask(case, tmp_path):
    hu, mask, affine, paths = case
    export_dicom(str(paths["ct"]), str(tmp_path / "dicom"), mask=str(paths["mask"]))
    ingest(str(tmp_path / "dicom"), str(tmp_path / "ingested"))
    report = json.loads((tmp_path / "ingested" / "report.json").read_text())
    (case_id,) = report["converted"]
    ct = nib.load(tmp_path / "ingested" / case_id / "ct.nii.gz")
    label = np.asanyarray(nib.load(tmp_path / "ingested" / case_id / "label.nii.gz").dataobj)
    assert np.allclose(ct.affine, affine, atol=1e-3), "same world coordinates"
    assert np.abs(np.asanyarray(ct.dataobj).astype(int) - hu).max() <= 1
    gtv = label == LABELS["gtv_1"]
    assert 2 * (gtv & (mask > 0)).sum() / (gtv.sum() + mask.sum()) >= 0.95


def test_export_reads_with_an_independent_reader_and_marks_the_case_synthetic(case, tmp_path):
    hu, mask, affine, paths = case
    out = export_dicom(str(paths["ct"]), str(tmp_path / "dicom"), mask=str(paths["mask"]), name="case7")
    volume, sitk_affine = read_series_ras(out / "CT")
    assert np.array_equal(volume, hu) and np.allclose(sitk_affine, affine, atol=1e-3), "SimpleITK (GDCM) agrees"
    slices = [pydicom.dcmread(p) for p in sorted((out / "CT").glob("*.dcm"))]
    first = slices[0]
    assert first.PixelRepresentation == 1 and first.RescaleSlope == 1 and first.RescaleIntercept == 0
    assert first.PatientID == "SYNTHETIC-case7" and "SYNTHETIC" in str(first.PatientName)
    assert first.ImageComments == SYNTHETIC_NOTE
    assert len({s.FrameOfReferenceUID for s in slices}) == 1 and len({s.SOPInstanceUID for s in slices}) == hu.shape[2]
    rtstruct = pydicom.dcmread(out / "RTSTRUCT" / "RS.dcm")
    assert [r.ROIName for r in rtstruct.StructureSetROISequence] == ["GTV-1"]
    referenced = {
        c.ContourImageSequence[0].ReferencedSOPInstanceUID for c in rtstruct.ROIContourSequence[0].ContourSequence
    }
    assert referenced <= {s.SOPInstanceUID for s in slices} and len(referenced) == int(mask.any(axis=(0, 1)).sum())
    assert rtstruct.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID == first.FrameOfReferenceUID


def test_every_export_gets_fresh_uids(case, tmp_path):
    _, _, _, paths = case
    a = export_dicom(str(paths["ct"]), str(tmp_path / "a"))
    b = export_dicom(str(paths["ct"]), str(tmp_path / "b"))
    uid = lambda out: pydicom.dcmread(next((out / "CT").glob("*.dcm"))).SeriesInstanceUID  # noqa: E731
    assert uid(a) != uid(b) and not (a / "RTSTRUCT").exists(), "no mask, no RTSTRUCT"


@pytest.mark.parametrize(
    "make_mask, match",
    [
        (lambda m: np.zeros_like(m), "empty"),
        (lambda m: m * 2, "binary"),
        (lambda m: m[:, :, :-1], "CT's grid"),
    ],
)
def test_bad_masks_are_refused_and_nothing_is_written(case, tmp_path, make_mask, match):
    _, mask, affine, paths = case
    bad = tmp_path / "bad_mask.nii.gz"
    nib.save(nib.Nifti1Image(make_mask(mask).astype(np.uint8), affine), bad)
    with pytest.raises(ValueError, match=match) as error:
        export_dicom(str(paths["ct"]), str(tmp_path / "dicom"), mask=str(bad))
    assert str(bad) in str(error.value) and not (tmp_path / "dicom").exists()


def test_an_existing_export_is_not_overwritten(case, tmp_path):
    _, _, _, paths = case
    (tmp_path / "dicom").mkdir()
    (tmp_path / "dicom" / "mine.txt").write_text("keep")
    with pytest.raises(FileExistsError):
        export_dicom(str(paths["ct"]), str(tmp_path / "dicom"))
    assert (tmp_path / "dicom" / "mine.txt").read_text() == "keep"


def test_inference_tumor_can_export_dicom(trained, tmp_path):
    overrides = {"model_dir": str(trained.dir), "output_dir": str(tmp_path), "num_inference_steps": 2, "dicom": True}
    run_bundle(["inference_tumor.json"], {**overrides, "tumor_center_mm": [30.0, 0.0, 0.0], "tumor_diameter_mm": 40.0})
    rtstruct = pydicom.dcmread(tmp_path / "sample_seed0_dicom" / "RTSTRUCT" / "RS.dcm")
    names = [roi.ROIName for roi in rtstruct.StructureSetROISequence]
    assert names[0] == "External" and "GTV-1" in names, "the structures, with the requested tumor"
    assert len(list((tmp_path / "sample_seed0_dicom" / "CT").glob("*.dcm"))) == 32
