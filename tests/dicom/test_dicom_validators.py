"""Every DICOM object the bundle writes passes dicom3tools' validators and what planning systems check.

Two writers: `export_dicom` (a synthetic CT with its tumor, or a patient's CT with an inserted tumor, kept in the
patient's study and frame of reference) and `write_phantom_dicom` (the phantom trees `ingest` is tested on). dciodvfy checks each object against its IOD, dcentvfy the objects of one study against each other; both
print "Error" and "Warning" lines, and every such line fails the test with the line in its message.
"""

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.multival import MultiValue

from helpers import BUNDLE
from helpers.dicom3tools import findings, validator
from scripts.dicom import writer
from scripts.dicom.ct_folder import read_ct_folder
from scripts.dicom.export import MANUFACTURER, export_dicom
from scripts.phantoms.dicom_tree import write_phantom_dicom
from scripts.sampling.insertion import blob_on_grid
from scripts.sampling.tumor_request import mask_from_centre

RECORD = {"image_size": [48, 48, 24], "image_spacing_mm": [6.0, 6.0, 5.0]}
MODALITIES = ["CT", "RTSTRUCT", "SEG"]


def by_modality(root: Path) -> dict[str, list[Path]]:
    """The DICOM files under `root`, sorted, per Modality."""
    files: dict[str, list[Path]] = {}
    for path in sorted(root.rglob("*.dcm")):
        files.setdefault(pydicom.dcmread(path, stop_before_pixels=True).Modality, []).append(path)
    return files


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, list[Path]]:
    """An `export_dicom` of a small CT-like volume with a tumor mask, per modality."""
    root = tmp_path_factory.mktemp("export")
    mask, affine = mask_from_centre(RECORD, [20.0, -10.0, 12.0], 40.0, seed=2)
    hu = np.full(mask.shape, -1000, np.int16)
    hu[5:43, 4:44, 2:22] = 40
    hu[mask > 0] = 30
    nib.save(nib.Nifti1Image(hu, affine), root / "ct.nii.gz")
    nib.save(nib.Nifti1Image(mask, affine), root / "mask.nii.gz")
    return by_modality(export_dicom(str(root / "ct.nii.gz"), str(root / "dicom"), mask=str(root / "mask.nii.gz")))


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> dict[str, list[Path]]:
    """One 48-voxel phantom case as a DICOM tree (CT, RTSTRUCT with seven structures, SEG), per modality."""
    root = tmp_path_factory.mktemp("phantom")
    return by_modality(write_phantom_dicom(str(root), n=1, size=48, seed=2))


@pytest.fixture(scope="module")
def inserted(tmp_path_factory, phantom) -> dict[str, list[Path]]:
    """An `export_dicom` with the phantom's CT slice header as `source` (what tumor insertion writes), per modality."""
    root = tmp_path_factory.mktemp("inserted")
    hu, grid, header = read_ct_folder(phantom["CT"][0].parent)
    mask = blob_on_grid(hu.shape, grid.affine_ras, (grid.affine_ras @ [24, 24, 24, 1])[:3], 40.0, seed=2)
    nib.save(nib.Nifti1Image(hu, grid.affine_ras), root / "ct.nii.gz")
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), grid.affine_ras), root / "gtv.nii.gz")
    export = export_dicom(str(root / "ct.nii.gz"), str(root / "dicom"), str(root / "gtv.nii.gz"), source=header)
    return by_modality(export)


@pytest.fixture(params=["exported", "phantom", "inserted"])
def written(request) -> dict[str, list[Path]]:
    """Each writer's objects in turn."""
    return request.getfixturevalue(request.param)


def read(files: dict[str, list[Path]], modality: str) -> list[pydicom.Dataset]:
    """The datasets of one modality."""
    return [pydicom.dcmread(path) for path in files[modality]]


@pytest.mark.parametrize("modality", MODALITIES)
def test_each_object_passes_dciodvfy(written, modality):
    program = validator("dciodvfy")
    problems = [f"{path.name}: {line}" for path in written[modality] for line in findings([program, str(path)])]
    assert problems == []


def test_the_study_passes_dcentvfy(written):
    program = validator("dcentvfy")
    assert sorted(written) == MODALITIES
    assert findings([program, *(str(p) for m in MODALITIES for p in written[m])]) == []


def test_ct_lies_head_first_supine_with_slice_thickness_equal_to_the_slice_step(written):
    slices = read(written, "CT")
    assert {s.PatientPosition for s in slices} == {"HFS"}
    orientation = np.array(slices[0].ImageOrientationPatient, float)
    normal = np.cross(orientation[:3], orientation[3:])
    steps = np.diff(sorted(float(np.dot(s.ImagePositionPatient, normal)) for s in slices))
    assert np.allclose(steps, [float(s.SliceThickness) for s in slices[1:]], atol=1e-4)


def test_exported_ct_is_derived_and_names_the_product(exported):
    metadata = json.loads((BUNDLE / "configs" / "metadata.json").read_text())
    first = read(exported, "CT")[0]
    assert list(first.ImageType) == ["DERIVED", "SECONDARY", "AXIAL"]
    equipment = (first.Manufacturer, first.ManufacturerModelName, first.SoftwareVersions)
    assert equipment == (MANUFACTURER, metadata["name"], metadata["version"])


def test_rtstruct_references_the_study_frame_and_images_of_its_ct(written):
    slices = read(written, "CT")
    (rtstruct,) = read(written, "RTSTRUCT")
    assert (rtstruct.StudyInstanceUID, rtstruct.FrameOfReferenceUID) == (
        slices[0].StudyInstanceUID,
        slices[0].FrameOfReferenceUID,
    )
    (frame,) = rtstruct.ReferencedFrameOfReferenceSequence
    (study,) = frame.RTReferencedStudySequence
    (series,) = study.RTReferencedSeriesSequence
    assert (frame.FrameOfReferenceUID, series.SeriesInstanceUID) == (
        slices[0].FrameOfReferenceUID,
        slices[0].SeriesInstanceUID,
    )
    listed = {item.ReferencedSOPInstanceUID for item in series.ContourImageSequence}
    assert listed <= {s.SOPInstanceUID for s in slices}
    contours = [c for roi in rtstruct.ROIContourSequence for c in roi.ContourSequence]
    referenced = {i.ReferencedSOPInstanceUID for c in contours for i in c.ContourImageSequence}
    assert contours and referenced - listed == set()
    short = [c.NumberOfContourPoints for c in contours if c.NumberOfContourPoints < 3]
    assert short == [] and all(len(c.ContourData) == 3 * c.NumberOfContourPoints for c in contours)


def test_every_roi_has_an_interpreted_type(written):
    (rtstruct,) = read(written, "RTSTRUCT")
    types = {o.ReferencedROINumber: o.get("RTROIInterpretedType", "") for o in rtstruct.RTROIObservationsSequence}
    assert [r.ROIName for r in rtstruct.StructureSetROISequence if not types.get(r.ROINumber)] == []


@pytest.mark.parametrize("modality", MODALITIES)
def test_decimal_strings_fit_16_characters(written, modality):
    dataset = read(written, modality)[0]
    values = [
        (element.keyword, str(value))
        for element in dataset.iterall()
        if element.VR == "DS" and element.value is not None
        for value in (element.value if isinstance(element.value, MultiValue) else [element.value])
    ]
    assert values and [v for v in values if len(v[1]) > 16] == []


def test_outlines_of_fewer_than_three_points_are_dropped(monkeypatch):
    square = np.array([[0.5, 1.0], [1.0, 1.5], [1.5, 1.0], [1.0, 0.5], [0.5, 1.0]])
    segment = np.array([[0.5, 1.0], [1.0, 1.5], [0.5, 1.0]])  # two points, closed
    monkeypatch.setattr(writer, "find_contours", lambda *_: [segment, square])
    mask = np.zeros((3, 3, 1), bool)
    mask[1, 1, 0] = True
    assert [len(points) for _, points in writer.trace_contours(mask, np.eye(4))] == [4]


def test_an_outline_too_long_for_explicit_vr_stays_decimal(tmp_path):
    # a comb of 256 teeth across a 512 x 512 slice: one outline of about 3000 points, over 64 KiB of ContourData
    mask = np.zeros((512, 512, 2), np.uint8)
    mask[8:504, 8:500] = 1
    mask[8:504:2, 500:506] = 1
    affine = np.diag([0.875, 0.875, 2.75, 1.0])
    nib.save(nib.Nifti1Image(np.where(mask > 0, 40, -1000).astype(np.int16), affine), tmp_path / "ct.nii.gz")
    nib.save(nib.Nifti1Image(mask, affine), tmp_path / "mask.nii.gz")
    written = by_modality(
        export_dicom(str(tmp_path / "ct.nii.gz"), str(tmp_path / "dicom"), str(tmp_path / "mask.nii.gz"))
    )
    (rtstruct,) = read(written, "RTSTRUCT")
    contour = rtstruct.ROIContourSequence[0].ContourSequence[0]
    assert contour.NumberOfContourPoints > 2500
    assert contour["ContourData"].VR == "DS" and len(contour.ContourData) == 3 * contour.NumberOfContourPoints
    assert findings([validator("dciodvfy"), str(written["RTSTRUCT"][0])]) == []
