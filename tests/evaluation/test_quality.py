"""Quality filter: accepts real phantoms, rejects each failure kind the thesis saw for the reason it stands for, writes quality.json."""

import json

import nibabel as nib
import numpy as np
import pytest

from helpers.corrupt import CORRUPTIONS, preprocessed_phantoms, write_volumes
from scripts.evaluation.quality import judge_volume, load_config, write_quality_report
from scripts.phantoms.thorax import write_phantoms

#: The measure whose rule must catch each failure kind.
EXPECTED_REASON = {
    "white_noise": "air_fraction",
    "smooth_noise": "air_fraction",
    "air_only": "body_fraction",
    "lungs_filled": "lung_fraction",
    "body_shifted": "body_slice_overlap_min",
    "body_gap": "body_slice_runs",
    "lungs_moved": "lung_",
}


@pytest.fixture(scope="module", params=[(32, 24), (64, 6)], ids=["32cube", "64cube"])
def real(request, tmp_path_factory):
    """Phantoms through the bundle's preprocessing, as HU volumes on the working grid: (grid, [(hu, lungs, spacing)])."""
    grid, n = request.param
    root = tmp_path_factory.mktemp(f"quality{grid}")
    write_phantoms(str(root), n=n, size=grid, seed=100 + grid)
    return grid, preprocessed_phantoms(root, grid)


@pytest.fixture(scope="module")
def config():
    return load_config()


def test_real_phantoms_are_accepted(real, config):
    _, cases = real
    judged = [judge_volume(hu, spacing, config) for hu, _, spacing in cases]
    rejected = [j["reasons"] for j in judged if not j["accept"]]
    assert len(rejected) <= 0.05 * len(cases), f"real phantoms rejected: {rejected}"
    assert all(j["reasons"] == [] for j in judged if j["accept"])


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_each_failure_kind_is_rejected_for_its_reason(real, config, kind):
    _, cases = real
    rng = np.random.default_rng(sorted(CORRUPTIONS).index(kind))
    judged = [judge_volume(CORRUPTIONS[kind](hu, lungs, spacing, rng), spacing, config) for hu, lungs, spacing in cases]
    caught = [any(r.startswith(EXPECTED_REASON[kind]) for r in j["reasons"]) for j in judged]
    assert sum(not j["accept"] for j in judged) >= 0.95 * len(cases)
    assert sum(caught) >= 0.95 * len(cases), [j["measures"] for j, c in zip(judged, caught) if not c]


def test_cli_writes_quality_json_for_samples_only(real, tmp_path):
    grid, cases = real
    hu, lungs, spacing = cases[0]
    rng = np.random.default_rng(0)
    write_volumes([hu], spacing, tmp_path, "good")
    write_volumes([CORRUPTIONS["lungs_filled"](hu, lungs, spacing, rng)], spacing, tmp_path, "bad")
    nib.save(nib.Nifti1Image(np.zeros((grid,) * 3, np.uint8), np.eye(4)), tmp_path / "good_00_mask.nii.gz")
    path = write_quality_report(str(tmp_path))
    judged = json.loads(path.read_text())
    assert path == tmp_path / "quality.json"
    assert sorted(judged) == ["bad_00_ct.nii.gz", "good_00_ct.nii.gz"], "only *_ct.nii.gz files are judged"
    assert judged["good_00_ct.nii.gz"]["accept"] is True and judged["good_00_ct.nii.gz"]["reasons"] == []
    assert judged["bad_00_ct.nii.gz"]["accept"] is False
    assert any("lung_fraction" in r and "no air-filled lungs" in r for r in judged["bad_00_ct.nii.gz"]["reasons"])
    assert 0.0 < judged["good_00_ct.nii.gz"]["measures"]["lung_fraction"] < 1.0


def test_thresholds_come_from_the_config_file(real, tmp_path):
    _, cases = real
    hu, _, spacing = cases[0]
    write_volumes([hu], spacing, tmp_path, "good")
    strict = load_config()
    strict["rules"]["lung_fraction"]["min"] = 0.99
    (tmp_path / "strict.json").write_text(json.dumps(strict))
    judged = json.loads(write_quality_report(str(tmp_path), str(tmp_path / "strict.json")).read_text())
    assert judged["good_00_ct.nii.gz"]["accept"] is False
    assert judged["good_00_ct.nii.gz"]["reasons"][0].startswith("lung_fraction")


def test_bad_inputs_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="samples folder not found"):
        write_quality_report(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match=f"no \\*_ct.nii.gz files in {tmp_path}"):
        write_quality_report(str(tmp_path))
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8, 2), np.int16), np.eye(4)), tmp_path / "four_d_ct.nii.gz")
    with pytest.raises(ValueError, match="four_d_ct.nii.gz: expected a 3D CT volume"):
        write_quality_report(str(tmp_path))
    unknown = load_config()
    unknown["rules"]["lung_size"] = {"min": 0.1, "why_min": "?"}
    with pytest.raises(ValueError, match="quality rule 'lung_size' names no measure"):
        judge_volume(np.full((16, 16, 16), -1000.0, np.float32), (10.0, 10.0, 10.0), unknown)
    with pytest.raises(FileNotFoundError, match="quality filter config not found"):
        load_config(tmp_path / "absent.json")
    unknown["rules"]["lung_size"] = {"min": 0.1}
    (tmp_path / "unexplained.json").write_text(json.dumps(unknown))
    with pytest.raises(ValueError, match="rule 'lung_size' needs a min or max, each with its why_min"):
        load_config(tmp_path / "unexplained.json")
