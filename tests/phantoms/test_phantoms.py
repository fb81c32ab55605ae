"""The phantom generator: plausible HU per tissue, tumors inside a lung, determinism, datalist."""

import dataclasses
import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from helpers import BUNDLE
from scripts.data.labels import LABELS
from scripts.phantoms.thorax import draw_anatomy, render_phantom, write_phantoms


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


def test_cli_writes_phantoms(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "scripts", "phantoms", "--out", str(tmp_path), "--n", "1", "--size", "32"],
        cwd=BUNDLE,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "PHANTOM-001" / "ct.nii.gz").is_file() and (tmp_path / "datalist.json").is_file()
