"""Virtual-patient cohorts (tiny models): one process and two torchrun ranks write the same patients; resume; refusals.

With the tiny models the anatomy checks reject the draws, so patients end as "fail" after their seeds: the bookkeeping,
the files and the identity across ranks are what is tested here; the demo segmenter's plausibility is bench/segmentation.py's.
"""

import csv
import json
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pydicom
import pytest

from helpers import BUNDLE
from scripts.data.labels import LABELS
from scripts.phantoms.anatomy import draw_anatomy
from scripts.phantoms.thorax import render_phantom
from scripts.sampling.cohort import tumor_centre

SPEC = {
    "patients": 3,
    "seed": 5,
    "tumor": {"diameter_mm": {"min": 30, "max": 40}, "left_share": 0.5},
    "unconditional_share": 0.34,
    "max_attempts": 2,
    "num_inference_steps": 2,
}


def cohort(out, spec, model_dir, *launcher: str) -> subprocess.CompletedProcess:
    """Run the cohort command from the bundle folder, as the README shows it (optionally under a launcher)."""
    command = [*launcher, "-m", "scripts", "cohort", "--spec", str(spec), "--out", str(out), "--model_dir", model_dir]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, cwd=BUNDLE, env=env, capture_output=True, text=True, timeout=1200)


def manifest(out) -> list[dict]:
    with open(out / "manifest.csv", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    path = tmp_path_factory.mktemp("spec") / "spec.json"
    path.write_text(json.dumps(SPEC))
    return path


@pytest.fixture(scope="module")
def single(spec, trained, tmp_path_factory):
    out = tmp_path_factory.mktemp("cohort") / "single"
    done = cohort(out, spec, str(trained.dir), sys.executable)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def test_one_process_and_two_ranks_write_the_same_cohort(single, spec, trained, tmp_path):
    out = tmp_path / "ranks"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29531"]
    done = cohort(out, spec, str(trained.dir), *torchrun)
    assert done.returncode == 0, done.stderr[-3000:]
    assert manifest(out) == manifest(single)
    for row in manifest(single):
        first, second = (np.asanyarray(nib.load(o / row["patient_id"] / "ct.nii.gz").dataobj) for o in (single, out))
        assert np.array_equal(first, second), row["patient_id"]


def test_every_patient_has_its_files_and_record(single):
    rows = manifest(single)
    assert [r["patient_id"] for r in rows] == ["SYN-0001", "SYN-0002", "SYN-0003"]
    assert sum(r["tumor_side"] == "" for r in rows) == 1
    ids = set()
    for row in rows:
        folder = single / row["patient_id"]
        assert row["quality"] == "pass" or len(row["rejected_seeds"].split(";")) == SPEC["max_attempts"], row
        ct, label = nib.load(folder / "ct.nii.gz"), nib.load(folder / "label.nii.gz")
        assert label.shape == ct.shape and np.allclose(label.affine, ct.affine)
        assert set(row["files"].split(";")) >= {f"{row['patient_id']}/{f}" for f in ("ct.nii.gz", "label.nii.gz")}
        slices = sorted((folder / "dicom" / "CT").glob("*.dcm"))
        assert len(slices) == ct.shape[2]
        ids.add(pydicom.dcmread(slices[0]).PatientID)
    assert len(ids) == 3, "a distinct PatientID per synthetic patient"


def test_a_rerun_resumes_without_rewriting(single, spec, trained):
    before = {p: p.stat().st_mtime_ns for p in single.rglob("ct.nii.gz")}
    done = cohort(single, spec, str(trained.dir), sys.executable)
    assert done.returncode == 0, done.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in single.rglob("ct.nii.gz")} == before


def test_a_folder_of_another_cohort_is_refused(single, trained, tmp_path):
    other = tmp_path / "other.json"
    other.write_text(json.dumps({**SPEC, "seed": 6}))
    done = cohort(single, other, str(trained.dir), sys.executable)
    assert done.returncode != 0 and "seed" in done.stderr


def test_tumor_centre_lies_deep_in_the_asked_lung():
    _, label, affine = render_phantom(draw_anatomy(np.random.default_rng(3)), 64, np.random.default_rng(3))
    lungs = label == LABELS["lungs"]
    for side, sign in (("left", 1), ("right", -1)):
        centre = tumor_centre(label, affine, side, 20.0, seed=1)
        voxel = np.round(np.linalg.solve(affine, [*centre, 1.0])[:3]).astype(int)
        assert lungs[tuple(voxel)], side
        assert sign * (centre[0] - (affine @ [*np.argwhere(lungs).mean(0), 1.0])[0]) > 0, side
    assert tumor_centre(np.zeros_like(label), affine, "left", 20.0, seed=1) is None
