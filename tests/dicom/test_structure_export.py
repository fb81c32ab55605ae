"""Export of a label map: every structure as an RTSTRUCT ROI and a SEG segment under its TG-263 name, lungs split.

The RTSTRUCT is read back with pydicom and rasterised here (skimage's polygon fill on the contours, in voxel indices
of the grid the CT slices' own IPP/IOP/PixelSpacing give), the SEG with pydicom-seg; both are compared with the
masks they came from by world coordinates.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pydicom
import pydicom_seg
import pytest
import SimpleITK as sitk
from scipy import ndimage
from skimage.draw import polygon

from helpers.dicom3tools import findings, validator
from scripts.data.labels import LABELS
from scripts.data.lungs import split_lungs
from scripts.dicom.export import export_dicom
from scripts.phantoms.thorax import write_phantoms

NAMES = ["External", "Lung_L", "Lung_R", "Heart", "Esophagus", "SpinalCord", "GTV-1", "GTV-2"]
TYPES = ["EXTERNAL", "ORGAN", "ORGAN", "ORGAN", "ORGAN", "ORGAN", "GTV", "GTV"]
#: DICOM's LPS patient frame to NIfTI's RAS (its own inverse), written here rather than taken from the bundle.
FLIP_XY = np.diag([-1.0, -1.0, 1.0, 1.0])


def world_x(mask: np.ndarray, affine_ras: np.ndarray) -> np.ndarray:
    """RAS x (mm) of each voxel of `mask`."""
    return affine_ras[0, :3] @ np.argwhere(mask).T + affine_ras[0, 3]


def grid_x(shape: tuple[int, ...], affine_ras: np.ndarray) -> np.ndarray:
    """RAS x (mm) of every voxel of a grid."""
    return np.tensordot(affine_ras[0, :3], np.indices(shape), axes=1) + affine_ras[0, 3]


def ball(shape: tuple[int, ...], affine_ras: np.ndarray, centre: np.ndarray, radius_mm: float) -> np.ndarray:
    """Voxels whose centres lie within `radius_mm` of the RAS point `centre`."""
    grid = np.indices(shape).reshape(3, -1)
    points = affine_ras[:3, :3] @ grid + affine_ras[:3, 3:]
    return (np.linalg.norm(points - np.asarray(centre)[:, None], axis=0) <= radius_mm).reshape(shape)


def centroid(mask: np.ndarray, affine_ras: np.ndarray) -> np.ndarray:
    """RAS centre of mass of `mask`."""
    return affine_ras[:3, :3] @ np.argwhere(mask).mean(0) + affine_ras[:3, 3]


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap of two binary volumes."""
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> dict:
    """A 64-voxel phantom CT with its label map, a second tumor (gtv_other) painted into the right lung."""
    root = tmp_path_factory.mktemp("phantom64")
    write_phantoms(str(root), n=1, size=64, seed=0)
    (case,) = sorted(p for p in root.iterdir() if p.is_dir())
    image = nib.load(case / "label.nii.gz")
    ids, affine = np.asanyarray(image.dataobj).copy(), image.affine
    cord_x = float(centroid(ids == LABELS["spinal_cord"], affine)[0])
    lungs = ids == LABELS["lungs"]
    right = lungs & (grid_x(ids.shape, affine) < cord_x)
    ids[ball(ids.shape, affine, centroid(right, affine), 17.0) & right] = LABELS["gtv_other"]
    nib.save(nib.Nifti1Image(ids, affine), case / "label.nii.gz")
    return {"ct": case / "ct.nii.gz", "label": case / "label.nii.gz", "ids": ids, "affine": affine, "cord_x": cord_x}


def expected_masks(phantom: dict) -> dict[str, np.ndarray]:
    """Per ROI name, the NIfTI-grid mask it should hold; the lungs split here at the spinal cord's x."""
    ids, affine = phantom["ids"], phantom["affine"]
    lungs = ids == LABELS["lungs"]
    left = lungs & (grid_x(ids.shape, affine) > phantom["cord_x"])
    masks = {"External": ids > 0, "Lung_L": left, "Lung_R": lungs & ~left}
    for name, structure in zip(NAMES[3:], ("heart", "esophagus", "spinal_cord", "gtv_1", "gtv_other"), strict=True):
        masks[name] = ids == LABELS[structure]
    return masks


@pytest.fixture(scope="module")
def exported(tmp_path_factory, phantom) -> dict:
    """The phantom exported with its label map: the CT slices, the RTSTRUCT and the SEG read back."""
    out = export_dicom(
        str(phantom["ct"]), str(tmp_path_factory.mktemp("export") / "dicom"), label=str(phantom["label"])
    )
    return read_export(out)


def read_export(out) -> dict:
    """The CT slices (sorted along their normal), their grid's LPS affine, RTSTRUCT and SEG of an export in `out`."""
    slices = [pydicom.dcmread(p) for p in (out / "CT").glob("*.dcm")]
    orientation = np.array(slices[0].ImageOrientationPatient, float)
    normal = np.cross(orientation[:3], orientation[3:])
    slices.sort(key=lambda s: float(np.dot(np.array(s.ImagePositionPatient, float), normal)))
    first, last = (np.array(s.ImagePositionPatient, float) for s in (slices[0], slices[-1]))
    row_spacing, column_spacing = (float(v) for v in slices[0].PixelSpacing)
    affine = np.eye(4)
    affine[:3, 0] = orientation[:3] * column_spacing  # along a row: the column index grows
    affine[:3, 1] = orientation[3:] * row_spacing
    affine[:3, 2] = (last - first) / (len(slices) - 1)
    affine[:3, 3] = first
    return {
        "out": out,
        "slices": slices,
        "affine_lps": affine,
        "rtstruct": pydicom.dcmread(out / "RTSTRUCT" / "RS.dcm"),
        "seg": pydicom.dcmread(out / "SEG" / "SEG.dcm"),
    }


def rasterise(roi_contours: pydicom.Dataset, export: dict) -> np.ndarray:
    """An ROI's contours filled (even-odd, so inner outlines are holes) on the CT grid, (column, row, slice) voxels."""
    slices, inverse = export["slices"], np.linalg.inv(export["affine_lps"])
    slice_of = {s.SOPInstanceUID: k for k, s in enumerate(slices)}
    volume = np.zeros((slices[0].Columns, slices[0].Rows, len(slices)), bool)
    for contour in roi_contours.ContourSequence:
        points = np.array(contour.ContourData, float).reshape(-1, 3)
        voxels = points @ inverse[:3, :3].T + inverse[:3, 3]
        k = int(round(voxels[0, 2]))
        assert np.allclose(voxels[:, 2], k, atol=1e-3), "a contour lies in one slice's plane"
        assert slice_of[contour.ContourImageSequence[0].ReferencedSOPInstanceUID] == k, "and references that slice"
        fill = np.zeros(volume.shape[:2], bool)
        fill[polygon(voxels[:, 0], voxels[:, 1], volume.shape[:2])] = True
        volume[:, :, k] ^= fill
    return volume


def on_nifti_grid(
    volume: np.ndarray, affine_lps: np.ndarray, affine_ras: np.ndarray, shape: tuple[int, ...]
) -> np.ndarray:
    """`volume` (placed in LPS mm by `affine_lps`) moved voxel by voxel onto the NIfTI grid (`affine_ras`, `shape`)."""
    voxels = np.argwhere(volume)
    mapped = np.linalg.inv(affine_ras) @ FLIP_XY @ affine_lps @ np.c_[voxels, np.ones(len(voxels))].T
    index = np.round(mapped[:3]).astype(int)
    assert np.allclose(mapped[:3], index, atol=1e-3), "the grids coincide"
    moved = np.zeros(shape, bool)
    moved[tuple(index)] = True
    return moved


def rasterised_rois(export: dict, phantom: dict) -> dict[str, np.ndarray]:
    """Per ROI name, its contours rasterised and moved onto the phantom's NIfTI grid."""
    names = {r.ROINumber: r.ROIName for r in export["rtstruct"].StructureSetROISequence}
    grid = (export["affine_lps"], phantom["affine"], phantom["ids"].shape)
    return {
        names[item.ReferencedROINumber]: on_nifti_grid(rasterise(item, export), *grid)
        for item in export["rtstruct"].ROIContourSequence
    }


def seg_segments(export: dict, phantom: dict) -> dict[str, np.ndarray]:
    """Per segment label, its voxels in the SEG (read with pydicom-seg) on the phantom's NIfTI grid."""
    result = pydicom_seg.MultiClassReader().read(export["seg"])
    numbers = np.transpose(sitk.GetArrayFromImage(result.image), (2, 1, 0))
    affine = np.eye(4)
    affine[:3, :3] = np.asarray(result.direction).reshape(3, 3) * np.asarray(result.spacing)
    affine[:3, 3] = result.origin
    return {
        info.SegmentLabel: on_nifti_grid(numbers == number, affine, phantom["affine"], phantom["ids"].shape)
        for number, info in sorted(result.segment_infos.items())
    }


def test_rtstruct_holds_every_structure_with_tg263_names_types_and_colours(exported):
    rtstruct = exported["rtstruct"]
    assert [r.ROIName for r in rtstruct.StructureSetROISequence] == NAMES
    types = {o.ReferencedROINumber: o.RTROIInterpretedType for o in rtstruct.RTROIObservationsSequence}
    assert [types[r.ROINumber] for r in rtstruct.StructureSetROISequence] == TYPES
    colours = [tuple(int(v) for v in item.ROIDisplayColor) for item in rtstruct.ROIContourSequence]
    assert all(len(c) == 3 and all(0 <= v <= 255 for v in c) for c in colours)
    assert len(set(colours)) == len(NAMES), "each ROI shows in its own colour"
    uids = {s.SOPInstanceUID for s in exported["slices"]}
    referenced = {
        image.ReferencedSOPInstanceUID
        for item in rtstruct.ROIContourSequence
        for contour in item.ContourSequence
        for image in contour.ContourImageSequence
    }
    assert referenced and referenced <= uids


def test_contours_rasterise_back_to_their_structures(exported, phantom):
    rois = rasterised_rois(exported, phantom)
    expected = expected_masks(phantom)
    scores = {name: round(dice(rois[name], expected[name]), 4) for name in NAMES}
    assert all(score >= 0.9 for score in scores.values()), scores


def test_left_lung_lies_at_larger_ras_x_than_the_right(exported, phantom):
    rois = rasterised_rois(exported, phantom)
    left, right = (world_x(rois[name], phantom["affine"]) for name in ("Lung_L", "Lung_R"))
    assert left.min() > right.max()


def test_seg_holds_the_same_segments_external_outside_the_others(exported, phantom):
    segments = seg_segments(exported, phantom)
    assert list(segments) == NAMES
    expected = expected_masks(phantom)
    organs = np.any([expected[name] for name in NAMES[1:]], axis=0)
    assert np.array_equal(segments["External"], expected["External"] & ~organs)
    assert all(np.array_equal(segments[name], expected[name]) for name in NAMES[1:])


def test_a_mask_given_with_the_label_is_gtv1_and_wins_over_the_lung_in_the_seg(tmp_path, phantom):
    affine, lungs = phantom["affine"], phantom["ids"] == LABELS["lungs"]
    left = expected_masks(phantom)["Lung_L"]
    mask = ball(lungs.shape, affine, centroid(left, affine), 20.0)
    assert (mask & lungs).sum() > 10 and not (mask & (phantom["ids"] == LABELS["gtv_1"])).any()
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), affine), tmp_path / "gtv.nii.gz")
    out = export_dicom(
        str(phantom["ct"]), str(tmp_path / "dicom"), str(tmp_path / "gtv.nii.gz"), label=str(phantom["label"])
    )
    export = read_export(out)
    rois = rasterised_rois(export, phantom)
    assert [r.ROIName for r in export["rtstruct"].StructureSetROISequence] == NAMES
    assert dice(rois["GTV-1"], mask) >= 0.9 and not (rois["GTV-1"] & (phantom["ids"] == LABELS["gtv_1"])).any()
    assert (rois["Lung_L"] & mask).any(), "the RTSTRUCT keeps the lung whole, overlapping the tumor"
    segments = seg_segments(export, phantom)
    assert np.array_equal(segments["GTV-1"], mask) and not (segments["Lung_L"] & mask).any()


@pytest.mark.parametrize(
    "make_label, match",
    [
        (lambda ids: ids[:, :, :-1], "CT's grid"),
        (lambda ids: np.where(ids == 4, 9, ids).astype(np.uint8), "no label id"),
    ],
)
def test_a_bad_label_is_refused_and_nothing_is_written(tmp_path, phantom, make_label, match):
    bad = tmp_path / "bad_label.nii.gz"
    nib.save(nib.Nifti1Image(make_label(phantom["ids"]), phantom["affine"]), bad)
    with pytest.raises(ValueError, match=match) as error:
        export_dicom(str(phantom["ct"]), str(tmp_path / "dicom"), label=str(bad))
    assert "label" in str(error.value) and str(bad) in str(error.value)
    assert not (tmp_path / "dicom").exists()


def lung_sides(phantom: dict) -> tuple[np.ndarray, np.ndarray]:
    """The phantom's left and right lung: its two largest lung components, ordered by their centroids' x."""
    components, _ = ndimage.label(phantom["ids"] == LABELS["lungs"])
    largest = np.argsort(np.bincount(components.ravel())[1:])[-2:] + 1
    pieces = sorted((components == n for n in largest), key=lambda m: -centroid(m, phantom["affine"])[0])
    return pieces[0], pieces[1]


def fused(phantom: dict) -> np.ndarray:
    """The phantom's lungs dilated until they touch: one connected component."""
    lungs = ndimage.binary_dilation(phantom["ids"] == LABELS["lungs"])
    assert ndimage.label(lungs)[1] == 1
    return lungs


@pytest.mark.parametrize("midline", [None, "cord"])
def test_fused_lungs_are_cut_at_the_midline_keeping_each_side(phantom, midline):
    left_lung, right_lung = lung_sides(phantom)
    lungs = fused(phantom)
    left, right = split_lungs(lungs, phantom["affine"], None if midline is None else phantom["cord_x"])
    assert np.array_equal(left | right, lungs) and not (left & right).any()
    assert (left & left_lung).sum() >= 0.95 * left_lung.sum()
    assert (right & right_lung).sum() >= 0.95 * right_lung.sum()


def as_lps_order(volume: np.ndarray, affine_ras: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The same voxels with the first two axes reversed (towards patient left and posterior) and their affine."""
    flip = FLIP_XY.copy()
    flip[:2, 3] = np.asarray(volume.shape[:2]) - 1
    return volume[::-1, ::-1, :], affine_ras @ flip


@pytest.mark.parametrize("kind", ["separate", "fused"])
def test_ras_and_lps_orderings_split_the_same_world_voxels(phantom, kind):
    lungs = phantom["ids"] == LABELS["lungs"] if kind == "separate" else fused(phantom)
    left, right = split_lungs(lungs, phantom["affine"])
    left_lps, right_lps = split_lungs(*as_lps_order(lungs, phantom["affine"]))
    assert np.array_equal(left_lps[::-1, ::-1, :], left) and np.array_equal(right_lps[::-1, ::-1, :], right)
    assert left.any() and right.any()
    assert world_x(left, phantom["affine"]).mean() > world_x(right, phantom["affine"]).mean()


def test_two_lungs_go_by_their_centroids_and_small_pieces_by_the_midline():
    lungs = np.zeros((40, 10, 10), bool)
    lungs[2:12, 2:8, 2:8] = True  # x 2..11: the right lung
    lungs[16:26, 2:8, 2:8] = True  # x 16..25, its centroid right of a midline at x 22: still the left lung
    lungs[30:32, 4:6, 4:6] = True  # a small piece beyond the midline: left
    lungs[14, 4, 4] = True  # a small piece before it: right
    left, right = split_lungs(lungs, np.eye(4), midline_x_mm=22.0)
    expected_left = np.zeros_like(lungs)
    expected_left[16:32] = lungs[16:32]
    assert np.array_equal(left, expected_left) and np.array_equal(right, lungs & ~expected_left)


def test_one_lung_piece_is_cut_at_the_given_midline():
    lungs = np.zeros((20, 4, 4), bool)
    lungs[2:18] = True
    left, right = split_lungs(lungs, np.diag([2.0, 2.0, 2.0, 1.0]), midline_x_mm=21.0)  # voxel x 10.5
    assert left[11:18].all() and not left[:11].any() and np.array_equal(right, lungs & ~left)


@pytest.mark.parametrize("series", ["RTSTRUCT", "SEG"])
def test_all_structures_pass_dciodvfy(exported, series):
    program = validator("dciodvfy")
    (path,) = (exported["out"] / series).glob("*.dcm")
    assert findings([program, str(path)]) == []
