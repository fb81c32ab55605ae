"""Preprocessing: table removal on the hard cases, lung-centred alignment, label channels, cache, the preprocess CLI."""

import dataclasses
import logging
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from monai.data import PersistentDataset
from monai.data.utils import pickle_hashing
from scipy import ndimage

from helpers import BUNDLE
from scripts.data.labels import LABELS
from scripts.phantoms.thorax import draw_anatomy, render_phantom
from scripts.transforms.body_mask import body_mask, table_top_row
from scripts.transforms.preprocess import preprocess_case, preprocessing_chain


def _phantom(seed: int, size: int = 64, **changes):
    rng = np.random.default_rng(seed)
    anatomy = dataclasses.replace(draw_anatomy(rng), **changes)
    ct, label, affine = render_phantom(anatomy, size, rng)
    return ct, label, affine


HARD_CASES = [
    {"cushion": True, "arms": "beside"},
    {"cushion": True, "arms": "up", "z_end": 330.0},
    {"cushion": False, "arms": "out", "body_y": -35.0},
    {"cushion": False, "arms": "beside", "body_y": 30.0},
]


@pytest.mark.parametrize("changes", HARD_CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_body_mask_drops_the_table_and_keeps_the_body(changes):
    ct, label, affine = _phantom(4, **changes)
    mask = body_mask(ct, np.diag(affine)[:3])
    table = (label == 0) & (ct > 0)  # dense table shells, outside every structure
    assert table.sum() > 100 and not (mask & table).any(), "no table voxel survives"
    body = label != 0
    assert (mask & body).sum() / body.sum() > 0.99, "body tissue, arms and lungs survive"
    assert (mask & (label == LABELS["lungs"])).sum() == (label == LABELS["lungs"]).sum(), "lungs are inside the body"


def test_table_top_is_found_at_its_height():
    for body_y in (-35.0, 0.0, 30.0):
        ct, label, affine = _phantom(2, body_y=body_y, cushion=False, table_gap=0.0)
        spacing = np.diag(affine)[:3]
        row = table_top_row(ct > -400, spacing)
        back_row = np.nonzero((label != 0).any(axis=(0, 2)))[0].min()
        assert row is not None and 0 <= (back_row - row) * spacing[1] <= 2 * spacing[1]


def test_no_table_in_view_is_no_table():
    ct, label, affine = _phantom(2)
    ct[:, : np.nonzero((label != 0).any(axis=(0, 2)))[0].min(), :] = -1000
    assert table_top_row(ct > -400, np.diag(affine)[:3]) is None


@pytest.fixture(scope="module")
def processed(phantom_dir_64):
    chain, _ = preprocessing_chain(32)
    return [chain({"image": str(c / "ct.nii.gz"), "label": str(c / "label.nii.gz")}) for c in phantom_dir_64]


@pytest.fixture(scope="module")
def phantom_dir_64(tmp_path_factory):
    from scripts.phantoms.thorax import write_phantoms

    root = tmp_path_factory.mktemp("phantoms64")
    write_phantoms(str(root), n=6, size=64, seed=11)
    return sorted(p for p in root.iterdir() if p.is_dir())


def test_chain_gives_the_grid_the_window_and_aligned_channels(processed):
    for d in processed:
        image, masks = d["image"], d["masks"]
        assert tuple(image.shape) == (1, 32, 32, 32) and tuple(masks.shape) == (4, 32, 32, 32)
        assert float(image.min()) >= -1.0 and float(image.max()) <= 1.0
        assert np.allclose(np.diag(np.asarray(image.affine))[:3], [14.0, 14.0, 11.0])
        lungs, body = masks[2] > 0, masks[3] > 0
        assert float(image[0][lungs].median()) < -0.6, "lung channel lies on air-like CT"
        near_body = ndimage.binary_dilation(np.asarray(body), iterations=2)  # partial volume, kept cushion
        assert float(np.asarray(image[0])[~near_body].max()) <= -0.99, "away from the body all is air (table removed)"
        assert bool((lungs <= body).all())


def test_lungs_land_at_the_same_place_of_the_grid(processed):
    centres = []
    for d in processed:
        where = np.argwhere(np.asarray(d["masks"][2]) > 0)
        centres.append((where.min(0) + where.max(0)) / 2.0)
    spread = np.ptp(np.array(centres), axis=0)
    assert (spread <= 1.0).all(), f"lung box centres spread {spread} voxels"
    assert np.allclose(np.mean(centres, axis=0), 15.5, atol=1.0), "centred in the grid"


def test_hu_lungs_place_the_box_like_the_label(phantom_dir_64):
    chain, _ = preprocessing_chain(64)  # at 14 mm voxels the trachea cannot be told from the lungs
    case = phantom_dir_64[0]
    with_label = chain({"image": str(case / "ct.nii.gz"), "label": str(case / "label.nii.gz")})["image"]
    without = chain({"image": str(case / "ct.nii.gz")})["image"]
    shift = np.abs(np.asarray(with_label.affine)[:3, 3] - np.asarray(without.affine)[:3, 3])
    assert (shift <= np.array([7.0, 7.0, 5.5])).all(), "HU-based lungs put the box within a voxel"


def test_lungs_that_do_not_fit_the_box_are_reported(phantom_dir_64, caplog):
    from monai.transforms import Compose, LoadImaged

    from scripts.transforms.alignment import CropToLungBoxd

    case = phantom_dir_64[0]
    load = LoadImaged(keys=["image", "label"], ensure_channel_first=True, image_only=True)
    crop = CropToLungBoxd(keys=["image", "label"], box_mm=[100.0, 100.0, 100.0])
    with caplog.at_level(logging.WARNING):
        Compose([load, crop])({"image": str(case / "ct.nii.gz"), "label": str(case / "label.nii.gz")})
    assert "do not fit" in caplog.text and "ct.nii.gz" in caplog.text


def test_cache_is_reused_and_invalidated_by_settings(tmp_path, phantom_dir_64):
    data = [{"image": str(phantom_dir_64[0] / "ct.nii.gz")}]
    chain32, _ = preprocessing_chain(32)
    first = PersistentDataset(data, chain32, cache_dir=tmp_path, hash_transform=pickle_hashing)
    a = first[0]["image"]
    files = set(tmp_path.iterdir())
    assert len(files) == 1
    b = PersistentDataset(data, preprocessing_chain(32)[0], cache_dir=tmp_path, hash_transform=pickle_hashing)[0][
        "image"
    ]
    assert set(tmp_path.iterdir()) == files and np.array_equal(np.asarray(a), np.asarray(b))
    PersistentDataset(data, preprocessing_chain(16)[0], cache_dir=tmp_path, hash_transform=pickle_hashing)[0]
    assert len(set(tmp_path.iterdir())) == 2, "another grid is another cache entry"


def test_preprocess_cli_writes_hu_on_the_working_grid(tmp_path, phantom_dir_64):
    case = phantom_dir_64[1]
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "scripts",
            "preprocess",
            "--image",
            str(case / "ct.nii.gz"),
            "--label",
            str(case / "label.nii.gz"),
            "--out",
            str(tmp_path),
            "--grid",
            "32",
        ],
        cwd=BUNDLE,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    ct, label = nib.load(tmp_path / "ct.nii.gz"), nib.load(tmp_path / "label.nii.gz")
    assert ct.shape == label.shape == (32, 32, 32) and np.allclose(ct.affine, label.affine)
    hu = np.asanyarray(ct.dataobj)
    assert ct.get_data_dtype() == np.int16 and hu.min() == -1000 and 0 < hu.max() <= 1000
    assert np.median(hu[np.asanyarray(label.dataobj) == LABELS["lungs"]]) < -600


@pytest.mark.parametrize("grid", [10, 30])
def test_preprocess_rejects_a_bad_grid(tmp_path, phantom_dir_64, grid):
    with pytest.raises(ValueError, match=rf"image_size \[{grid}, {grid}, {grid}\] does not fit the networks"):
        preprocess_case(str(phantom_dir_64[0] / "ct.nii.gz"), str(tmp_path), grid=grid)


def test_preprocess_does_not_overwrite(tmp_path, phantom_dir_64):
    (tmp_path / "ct.nii.gz").write_bytes(b"mine")
    with pytest.raises(FileExistsError, match="ct.nii.gz"):
        preprocess_case(str(phantom_dir_64[0] / "ct.nii.gz"), str(tmp_path), grid=32)
    assert (tmp_path / "ct.nii.gz").read_bytes() == b"mine"
