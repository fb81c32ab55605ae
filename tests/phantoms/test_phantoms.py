"""The phantom generator: plausible HU per tissue, tumors inside a lung, determinism, sizes, fine detail, datalist."""

import dataclasses
import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pydicom
import pytest
from scipy import ndimage

from helpers import BUNDLE
from scripts.data.labels import LABELS
from scripts.phantoms.dicom_tree import write_phantom_dicom
from scripts.phantoms.thorax import check_size, draw_anatomy, render_phantom, write_phantoms


@pytest.fixture(scope="module")
def phantom():
    rng = np.random.default_rng(3)
    anatomy = dataclasses.replace(draw_anatomy(rng), body_y=0.0)  # the table in view
    ct, label, affine = render_phantom(anatomy, 96, rng)
    return anatomy, ct, label, affine


def test_hu_of_each_tissue_is_plausible(phantom):
    _, ct, label, _ = phantom
    assert ct.dtype == np.int16 and label.dtype == np.uint8
    assert -1024 <= ct.min() and ct.max() <= 3071
    lungs = ct[label == LABELS["lungs"]]
    assert -920 < np.median(lungs) < -700, "lung parenchyma is air-like"
    assert np.percentile(lungs, 99) - np.median(lungs) > 250, "lungs hold vessels brighter than parenchyma"
    assert -30 < np.median(ct[label == LABELS["heart"]]) < 110
    tumor_core = ndimage.binary_erosion(label == LABELS["gtv_1"])  # away from partial volume with lung
    assert -30 < np.median(ct[tumor_core]) < 110
    assert np.median(ct[label == 0]) < -950, "outside the body is air"
    body = ct[label == LABELS["body"]]
    assert np.percentile(body, 99) > 300, "the body holds bone (spine, ribs)"
    assert np.mean((body > -150) & (body < -50)) > 0.05, "the body holds subcutaneous fat"


def test_table_lies_under_the_body_outside_its_label(phantom):
    _, ct, label, _ = phantom
    body_rows = np.nonzero((label == LABELS["body"]).any(axis=(0, 2)))[0]
    below = ct[:, : body_rows.min(), :]  # y increases anteriorly: lower rows are behind the back
    assert (below > 100).mean() > 0.01, "a dense table shell lies behind the back"
    assert (label[:, : body_rows.min(), :] == 0).all()


def test_tumors_sit_inside_a_lung_and_gtv1_is_largest(phantom):
    anatomy, _, label, _ = phantom
    gtv1 = label == LABELS["gtv_1"]
    others = label == LABELS["gtv_other"]
    assert gtv1.any()
    if len(anatomy.tumor_diameters) > 1:
        assert 0 < others.sum() <= gtv1.sum()
    tumor = gtv1 | others
    shell = ndimage.binary_dilation(tumor) & ~tumor
    assert np.mean(label[shell] == LABELS["lungs"]) > 0.5, "tumors are surrounded mostly by lung"


def test_same_seed_same_phantom_other_seed_other_phantom():
    def render(seed):
        rng = np.random.default_rng(seed)
        return render_phantom(draw_anatomy(rng), 32, rng)

    a, b, c = render(5), render(5), render(6)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert a[0].shape != c[0].shape or not np.array_equal(a[0], c[0])


def _render(seed, size, **changes):
    """The phantom of `seed` at `size`, the anatomy's fields in `changes` replaced: (anatomy, HU, label, affine)."""
    rng = np.random.default_rng(seed)
    anatomy = dataclasses.replace(draw_anatomy(rng), **changes)
    return anatomy, *render_phantom(anatomy, size, rng)


def test_one_size_keeps_square_voxels_and_slices_at_least_3_mm_apart():
    anatomy, ct, label, affine = _render(4, 40)
    spacing = np.diag(affine)[:3]
    assert ct.shape[:2] == (40, 40) and label.shape == ct.shape
    assert np.isclose(spacing[0], anatomy.field_of_view / 40) and spacing[1] == spacing[0] and spacing[2] >= 3.0
    assert abs(ct.shape[2] * spacing[2] - (anatomy.z_end - anatomy.z_start)) <= spacing[2] / 2


def test_per_axis_size_gives_that_shape_and_spacing():
    anatomy, ct, label, affine = _render(4, [40, 24, 12])
    assert ct.shape == label.shape == (40, 24, 12)
    extent = anatomy.z_end - anatomy.z_start
    fov = anatomy.field_of_view
    assert np.allclose(np.diag(affine)[:3], [fov / 40, fov / 24, extent / 12])
    assert np.allclose(affine[:3, 3], [(fov / 40 - fov) / 2, (fov / 24 - fov) / 2, anatomy.z_start])
    assert set(np.unique(label)) >= {LABELS["lungs"], LABELS["body"], LABELS["gtv_1"]}


def test_size_is_one_int_or_three():
    assert check_size(48) == check_size([48]) == 48
    assert check_size((np.int64(40), 24, 12)) == check_size([40, 24, 12]) == (40, 24, 12)


@pytest.mark.parametrize(
    "size",
    [8, 600, 32.0, True, "32", [], [32, 32], [32, 32, 32, 32], [8, 32, 32], [32, 600, 32], [32, 32, 4], [32, 32, 600]],
)
def test_bad_sizes_are_refused_naming_size(tmp_path, size):
    with pytest.raises(ValueError, match="size"):
        write_phantoms(str(tmp_path / "nifti"), n=1, size=size)
    with pytest.raises(ValueError, match="size"):
        render_phantom(draw_anatomy(np.random.default_rng(0)), size, np.random.default_rng(0))
    assert not any(tmp_path.iterdir()), "nothing is written for a bad size"


def test_dicom_tree_of_a_per_axis_phantom_has_nz_slices_at_its_spacing(tmp_path):
    write_phantom_dicom(str(tmp_path / "dicom"), n=1, size=[32, 24, 10], seed=2)
    write_phantoms(str(tmp_path / "nifti"), n=1, size=[32, 24, 10], seed=2)
    spacing = np.diag(nib.load(tmp_path / "nifti" / "PHANTOM-001" / "ct.nii.gz").affine)[:3]
    files = sorted((tmp_path / "dicom").glob("PHANTOM-001/*/0.000000-*/*.dcm"))
    assert len(files) == 10
    slices = [pydicom.dcmread(f) for f in files]
    assert all((s.Rows, s.Columns) == (24, 32) for s in slices)
    assert np.allclose([float(s.SliceThickness) for s in slices], spacing[2])
    assert np.allclose(np.diff(sorted(float(s.ImagePositionPatient[2]) for s in slices)), spacing[2])
    assert np.allclose(slices[0].PixelSpacing, [spacing[1], spacing[0]])


def test_lung_detail_is_set_in_mm_so_a_coarser_size_renders_the_same_case():
    """Another detail seed changes only the fine detail, not the noise fields or tumors.

    In the lungs that change has more high spatial frequency on a finer grid, and at 48 voxels it is the change at 96
    averaged 2 x 2: the same case, rendered coarser.
    """
    anatomy = dataclasses.replace(draw_anatomy(np.random.default_rng(0)), noise_hu=0.0)

    def detail_change(size):
        (ct, label, affine), (other, other_label, _) = (
            render_phantom(dataclasses.replace(anatomy, detail_seed=seed), size, np.random.default_rng(1))
            for seed in (1, 2)
        )
        assert np.array_equal(label, other_label), "the detail leaves the labels as they are"
        lungs = ndimage.binary_erosion(label == LABELS["lungs"])
        change = ct.astype(np.float32) - other
        high = change - ndimage.gaussian_filter(change, 3.0 / np.diag(affine)[:3])  # finer than a 3 mm blur
        return change, lungs, float(change[lungs].std()), float(high[lungs].std())

    fine, fine_lungs, fine_std, fine_high = detail_change([96, 96, 24])
    coarse, coarse_lungs, coarse_std, coarse_high = detail_change([48, 48, 24])
    assert fine_std > 15.0 and fine_std > 1.4 * coarse_std, "thin vessels and fissures fade on the coarse grid"
    assert fine_high > 4.0 and fine_high > 5 * coarse_high, (fine_high, coarse_high)
    pooled = fine.reshape(48, 2, 48, 2, 24).mean(axis=(1, 3))
    lungs = coarse_lungs & fine_lungs.reshape(48, 2, 48, 2, 24).all(axis=(1, 3))
    assert np.corrcoef(pooled[lungs], coarse[lungs])[0, 1] > 0.8, "the detail is drawn in mm, not per grid"


def test_ribs_have_a_cortex_around_marrow_and_fat_has_texture():
    anatomy, ct, label, affine = _render(2, [192, 192, 64], noise_hu=0.0, arms="out")
    x = affine[0, 3] + affine[0, 0] * np.arange(ct.shape[0])[:, None, None]
    z = affine[2, 3] + affine[2, 2] * np.arange(ct.shape[2])[None, None, :]
    body = label == LABELS["body"]
    ribs = (ct > 150) & body & (np.abs(x) > 30.0) & (z > 0.0) & (z < anatomy.lung_height)  # beside spine and sternum
    core = ndimage.binary_erosion(ribs, structure=np.ones((3, 3, 1), bool))
    assert core.sum() > 1000
    assert np.median(ct[core]) < 450, "marrow inside the ribs (a solid cortical rib would be about 600)"
    assert np.percentile(ct[ribs & ~core], 90) > 420, "a denser cortex around it"
    fat = ndimage.binary_erosion(body & (ct > -160) & (ct < -40), iterations=2)
    assert fat.sum() > 1000 and ct[fat].std() > 1.5, "fibrous septa in the fat (without noise, flat fat has none)"


def test_write_phantoms_layout_and_split(tmp_path):
    datalist_path = write_phantoms(str(tmp_path), n=5, size=32, seed=1)
    datalist = json.loads(datalist_path.read_text())
    cases = [e["case"] for split in ("training", "validation", "test") for e in datalist[split]]
    assert sorted(cases) == [f"PHANTOM-{i:03d}" for i in range(1, 6)]
    assert len(datalist["test"]) >= 1 and len(datalist["validation"]) >= 1
    entry = datalist["training"][0]
    ct, label = nib.load(tmp_path / entry["image"]), nib.load(tmp_path / entry["label"])
    assert ct.shape == label.shape and np.allclose(ct.affine, label.affine)
    assert ct.get_data_dtype() == np.int16
    assert set(np.unique(np.asanyarray(label.dataobj))) <= set(LABELS.values())


def test_write_phantoms_keeps_existing_cases(tmp_path):
    write_phantoms(str(tmp_path), n=1, size=32, seed=1)
    ct_path = tmp_path / "PHANTOM-001" / "ct.nii.gz"
    before = ct_path.read_bytes()
    write_phantoms(str(tmp_path), n=1, size=32, seed=2)
    assert ct_path.read_bytes() == before


@pytest.mark.parametrize("kwargs, name", [({"n": 0}, "n"), ({"size": 8}, "size")])
def test_write_phantoms_rejects_bad_parameters(tmp_path, kwargs, name):
    with pytest.raises(ValueError, match=name):
        write_phantoms(str(tmp_path), **{"n": 1, "size": 32, **kwargs})


@pytest.mark.parametrize("size, shape", [("32", (32, 32)), ("[40,24,12]", (40, 24, 12))])
def test_cli_writes_phantoms(tmp_path, size, shape):
    done = subprocess.run(
        [sys.executable, "-m", "scripts", "phantoms", "--out", str(tmp_path), "--n", "1", "--size", size],
        cwd=BUNDLE,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "PHANTOM-001" / "ct.nii.gz").is_file() and (tmp_path / "datalist.json").is_file()
    assert nib.load(tmp_path / "PHANTOM-001" / "ct.nii.gz").shape[: len(shape)] == shape
