"""Parts of ingestion: polygon filling, ROI names, label precedence, SEG frames on another grid, staged folders."""

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.pixel_data_handlers.numpy_handler import pack_bits
from skimage.draw import polygon2mask

from helpers.sitk_reference import read_series_ras
from scripts.data.labels import LABELS
from scripts.data.staging import PARTIAL_SUFFIX, staged_folder
from scripts.dicom.grid import reorient
from scripts.dicom.index import group, list_files, read_headers
from scripts.dicom.ingest import ingest
from scripts.dicom.roi_names import load_roi_names, normalise_roi_name
from scripts.dicom.rtstruct import fill_even_odd
from scripts.dicom.seg import read_seg
from scripts.dicom.series import check_series, read_hu
from scripts.dicom.structures import label_map
from scripts.phantoms.dicom_tree import ROI_NAMES, write_phantom_dicom


def test_polygon_fill_matches_skimage_with_holes_by_the_even_odd_rule():
    rng = np.random.default_rng(0)
    for _ in range(200):
        shape = (int(rng.integers(4, 50)), int(rng.integers(4, 50)))
        polygons = [
            rng.uniform(-8, max(shape) + 8, size=(int(rng.integers(3, 25)), 2)) for _ in range(rng.integers(1, 4))
        ]
        expected = np.logical_xor.reduce([polygon2mask(shape, p) for p in polygons])
        assert np.array_equal(fill_even_odd(polygons, shape), expected)


def test_nested_contours_cut_a_hole_and_fill_an_island():
    angle = np.linspace(0, 2 * np.pi, 240, endpoint=False)
    circles = [np.column_stack([30 + r * np.cos(angle), 30 + r * np.sin(angle)]) for r in (25, 15, 5)]
    mask = fill_even_odd(circles, (61, 61))
    assert mask[30, 30] and not mask[30, 40] and mask[30, 50] and not mask[30, 58]
    assert abs(mask.sum() - np.pi * (25**2 - 15**2 + 5**2)) < 0.02 * mask.sum()


@pytest.mark.parametrize(
    "name, structure",
    [
        ("GTV-1", "gtv_1"),
        ("GTV1", "gtv_1"),
        ("gtv 1", "gtv_1"),
        ("GTV", "gtv_1"),
        ("GTV-2", "gtv_other"),
        ("GTV-12", "gtv_other"),
        ("Lung-Left", "lungs"),
        ("Lung-Right", "lungs"),
        ("Lungs-Total", "lungs"),
        ("lung_r", "lungs"),
        ("Heart", "heart"),
        ("Esophagus", "esophagus"),
        ("Oesophagus", "esophagus"),
        ("Spinal-Cord", "spinal_cord"),
        ("SpinalCord", "spinal_cord"),
        ("External", "body"),
        ("BODY", "body"),
        ("PTV", None),
        ("CTV-1", None),
        ("Lungs-GTV", None),
        ("Spinal-Cord-PRV", None),
        ("Heart+Lungs", None),
    ],
)
def test_roi_names_map_to_structures(name, structure):
    assert load_roi_names().structure(name) == structure


def test_every_phantom_name_variant_maps_to_its_structure():
    names = load_roi_names()
    for structure, variants in ROI_NAMES.items():
        assert {names.structure(n) for variant in variants for n in variant} == {structure}


def test_user_patterns_come_first_and_the_bundle_ones_still_apply(tmp_path):
    extra = tmp_path / "names.json"
    extra.write_text(json.dumps({"patterns": {"gtv_other": ["gtv 1"], "gtv_1": ["tumou?r main"]}}))
    names = load_roi_names(extra)
    assert names.structure("GTV-1") == "gtv_other" and names.structure("Tumor_Main") == "gtv_1"
    assert names.structure("Heart") == "heart" and normalise_roi_name(" Lung_R  ") == "lung r"


@pytest.mark.parametrize(
    "content, words",
    [
        ({"patterns": {"liver": ["liver"]}}, ["unknown structure 'liver'"]),
        ({"patterns": {"heart": ["(heart"]}}, ["'(heart'", "not a regular expression"]),
        ({"patterns": {"heart": "heart"}}, ["must be a list"]),
        ({"names": {}}, ["not a ROI name file"]),
    ],
)
def test_bad_roi_name_files_are_refused_naming_file_and_entry(tmp_path, content, words):
    extra = tmp_path / "names.json"
    extra.write_text(json.dumps(content))
    with pytest.raises(ValueError) as error:
        load_roi_names(extra)
    assert str(extra) in str(error.value) and all(w in str(error.value) for w in words)


@pytest.mark.parametrize(
    "kwargs, word",
    [
        ({"src": "/nonexistent"}, "src"),
        ({"workers": 0}, "workers"),
        ({"prefer": "pdf"}, "prefer"),
        ({"test_fraction": 1.5}, "test_fraction"),
    ],
)
def test_ingest_refuses_bad_parameters(tmp_path, kwargs, word):
    with pytest.raises(ValueError, match=word):
        ingest(**{"src": str(tmp_path), "dst": str(tmp_path / "out"), **kwargs})
    assert not (tmp_path / "out").exists(), "nothing is written before the parameters are checked"


def test_label_map_follows_the_precedence_of_the_labels_table():
    body = np.ones((4, 4, 4), bool)
    lungs = np.zeros_like(body)
    lungs[1:3] = True
    gtv = np.zeros_like(body)
    gtv[1, 1, 1] = True
    label = label_map({"body": body, "lungs": lungs, "gtv_1": gtv}, body.shape)
    assert label[1, 1, 1] == LABELS["gtv_1"] and label[2, 0, 0] == LABELS["lungs"] and label[0, 0, 0] == LABELS["body"]


def test_staged_folder_appears_whole_or_not_at_all(tmp_path):
    target = tmp_path / "case"
    with pytest.raises(RuntimeError):
        with staged_folder(target) as staging:
            (staging / "ct.nii.gz").write_bytes(b"half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    with staged_folder(target) as staging:
        (staging / "a").write_text("first")
    with pytest.raises(FileExistsError, match=str(target)):
        with staged_folder(target):
            pass
    with staged_folder(target, overwrite=True) as staging:
        (staging / "b").write_text("second")
    assert [p.name for p in tmp_path.iterdir()] == ["case"] and [p.name for p in target.iterdir()] == ["b"]
    assert not list(tmp_path.glob(f"*{PARTIAL_SUFFIX}"))


def _crop_and_mirror_frames(path: Path, out: Path, rows: int, columns: int) -> None:
    """Rewrite a SEG with its frames cropped by `rows` and `columns` and mirrored left-right, positions moved to match."""
    dataset = pydicom.dcmread(path)
    frames = dataset.pixel_array.reshape(-1, dataset.Rows, dataset.Columns)[:, rows:, columns:][:, :, ::-1]
    shared = dataset.SharedFunctionalGroupsSequence[0]
    orientation = np.asarray(shared.PlaneOrientationSequence[0].ImageOrientationPatient, float)
    row_spacing, column_spacing = (float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing)
    move = rows * row_spacing * orientation[3:] + (columns + frames.shape[2] - 1) * column_spacing * orientation[:3]
    for item in dataset.PerFrameFunctionalGroupsSequence:
        plane = item.PlanePositionSequence[0]
        plane.ImagePositionPatient = [f"{v:.6f}" for v in np.asarray(plane.ImagePositionPatient, float) + move]
    shared.PlaneOrientationSequence[0].ImageOrientationPatient = [
        f"{v:g}" for v in (*-orientation[:3], *orientation[3:])
    ]
    dataset.Rows, dataset.Columns = frames.shape[1:]
    dataset.PixelData = pack_bits(np.ascontiguousarray(frames))
    dataset.save_as(out)


def test_seg_frames_on_a_cropped_mirrored_grid_land_on_the_same_ct_voxels(tmp_path):
    write_phantom_dicom(str(tmp_path / "dicom"), n=1, size=32, seed=1)
    paths = list_files(tmp_path / "dicom")
    index = group(tmp_path / "dicom", paths, read_headers(paths))
    patient = index.patients["PHANTOM-001"]
    grid, _ = check_series(patient.of_modality("CT")[0])
    seg = patient.of_modality("SEG")[0].files[0].path
    _crop_and_mirror_frames(Path(seg), tmp_path / "moved.dcm", rows=8, columns=6)
    names = load_roi_names()
    original = {roi.name: roi.mask for roi in read_seg(seg, grid, names).rois}
    moved = read_seg(str(tmp_path / "moved.dcm"), grid, names)
    assert not moved.problems and {roi.name for roi in moved.rois} == set(original)
    kept = np.zeros(grid.shape, bool)
    kept[6:, 8:, :] = True  # CT voxels (i, j) = (column, row): the first 6 columns and 8 rows are cropped away
    for roi in moved.rois:
        assert np.array_equal(roi.mask, original[roi.name] & kept)
    assert any((mask & ~kept).any() for mask in original.values()), "the crop removes some voxels"


def test_non_square_anisotropic_flipped_ct_matches_simpleitk(tmp_path):
    write_phantom_dicom(str(tmp_path / "dicom"), n=1, size=32, seed=3)
    ct_files = []
    for path in sorted((tmp_path / "dicom").rglob("*.dcm")):
        dataset = pydicom.dcmread(path)
        if dataset.Modality != "CT":
            continue
        dataset.PixelData = np.ascontiguousarray(dataset.pixel_array[:, :20]).tobytes()
        dataset.Columns, dataset.PixelSpacing = 20, [1.5, 2.5]
        dataset.ImageOrientationPatient = [-1, 0, 0, 0, -1, 0]
        dataset.save_as(path)
        ct_files.append(str(path))
    paths = list_files(tmp_path / "dicom")
    series = group(tmp_path / "dicom", paths, read_headers(paths)).patients["PHANTOM-001"].of_modality("CT")[0]
    grid, slices = check_series(series)
    ct, affine = reorient(read_hu(slices), grid.affine_ras, "RAS")
    expected, expected_affine = read_series_ras(Path(ct_files[0]).parent)
    assert ct.shape == expected.shape and ct.shape[:2] == (20, 32)
    np.testing.assert_allclose(affine, expected_affine, atol=1e-3)
    # PixelSpacing is (between rows, between columns): x (along a row) gets the second value
    np.testing.assert_allclose(np.abs(np.diag(affine)[:3]), [2.5, 1.5, grid.affine_lps[2, 2]], atol=1e-3)
    assert np.array_equal(ct, expected)
