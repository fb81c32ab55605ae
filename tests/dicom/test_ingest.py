"""Ingestion end to end: phantom DICOM trees (CT, RTSTRUCT, SEG) back to the phantoms, re-runs, the CLI, the datalist."""

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import load_decathlon_datalist

from helpers import BUNDLE
from helpers.sitk_reference import read_series_ras
from scripts.data.labels import LABELS, PRECEDENCE
from scripts.data.staging import PARTIAL_SUFFIX
from scripts.dicom.ingest import RECORD, ingest
from scripts.phantoms.dicom_tree import write_phantom_dicom
from scripts.phantoms.thorax import write_phantoms

SEED, SIZE, N = 2, 48, 3  # the first case holds all seven structures at this size


def load(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A NIfTI file's array and affine."""
    image = nib.load(path)
    return np.asanyarray(image.dataobj), image.affine


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap of two boolean masks."""
    return 2.0 * np.logical_and(a, b).sum() / max(int(a.sum() + b.sum()), 1)


@pytest.fixture(scope="module")
def trees(tmp_path_factory) -> SimpleNamespace:
    """The same phantoms as a DICOM tree and as NIfTI, and the DICOM tree ingested preferring RTSTRUCT and SEG."""
    root = tmp_path_factory.mktemp("ingest")
    write_phantom_dicom(str(root / "dicom"), n=N, size=SIZE, seed=SEED)
    write_phantoms(str(root / "nifti"), n=N, size=SIZE, seed=SEED)
    reports = {}
    for prefer in ("rtstruct", "seg"):
        report = ingest(str(root / "dicom"), str(root / prefer), workers=1, prefer=prefer, seed=SEED)
        reports[prefer] = json.loads(Path(report).read_text())
    cases = [f"PHANTOM-{i:03d}" for i in range(1, N + 1)]
    return SimpleNamespace(root=root, dicom=root / "dicom", nifti=root / "nifti", reports=reports, cases=cases)


def test_every_phantom_converts(trees):
    for report in trees.reports.values():
        assert report["summary"] == {"converted": N, "kept": 0, "excluded": 0}
        assert sorted(report["converted"]) == trees.cases
        assert (
            report["unmapped_roi_names"] == {} and report["unreadable_files"] == {} and report["not_dicom_files"] == []
        )


def ingested_and_truth(trees, prefer: str, case: str, name: str) -> tuple[np.ndarray, np.ndarray]:
    """One file of an ingested case and of the same NIfTI phantom, checked to lie on the same world grid."""
    truth, truth_affine = load(trees.nifti / case / name)
    result, affine = load(trees.root / prefer / case / name)
    assert result.shape == truth.shape
    np.testing.assert_allclose(affine, truth_affine, atol=1e-3)
    return result, truth


@pytest.mark.parametrize("prefer", ["rtstruct", "seg"])
def test_round_trip_gives_back_the_phantom_ct_on_the_same_world_grid(trees, prefer):
    for case in trees.cases:
        ct, truth = ingested_and_truth(trees, prefer, case, "ct.nii.gz")
        assert ct.dtype == np.int16 and np.abs(ct.astype(np.int32) - truth).max() <= 1


@pytest.mark.parametrize("prefer", ["rtstruct", "seg"])
def test_round_trip_gives_back_each_structure(trees, prefer):
    seen = set()
    for case in trees.cases:
        label, truth = ingested_and_truth(trees, prefer, case, "label.nii.gz")
        assert label.dtype == np.uint8
        assert set(np.unique(label)) == set(np.unique(truth)), "no structure lost or invented"
        for name in PRECEDENCE:
            if (truth == LABELS[name]).any():
                seen.add(name)
                score = dice(label == LABELS[name], truth == LABELS[name])
                assert score >= 0.95, f"{case} {name}: Dice {score:.3f}"
    assert seen == set(PRECEDENCE), "the phantoms exercise every structure"


def test_report_says_which_source_gave_each_structure(trees):
    for prefer, kind, other in (("rtstruct", "RTSTRUCT", "SEG"), ("seg", "SEG", "RTSTRUCT")):
        record = trees.reports[prefer]["converted"]["PHANTOM-001"]
        assert set(record["structures"]) == set(PRECEDENCE)
        for name, source in record["structures"].items():
            assert source["source"] == kind and Path(source["file"]).is_file() and source["rois"]
            assert [a["source"] for a in source["also_in"]] == [other]
            if name != "body":  # the SEG stores the body without the organs inside it
                assert source["also_in"][0]["dice"] >= 0.95
        assert record == json.loads((trees.root / prefer / "PHANTOM-001" / RECORD).read_text())


def test_ct_geometry_agrees_with_simpleitk(trees):
    files = sorted((trees.dicom / "PHANTOM-002").rglob("*.dcm"))
    folder = next(p.parent for p in files if pydicom.dcmread(p, stop_before_pixels=True).Modality == "CT")
    expected, expected_affine = read_series_ras(folder)
    ct, affine = load(trees.root / "rtstruct" / "PHANTOM-002" / "ct.nii.gz")
    np.testing.assert_allclose(affine, expected_affine, atol=1e-3)
    assert np.array_equal(ct, expected)


def test_rerun_keeps_finished_cases_and_overwrite_replaces_them(trees, tmp_path):
    ingest(str(trees.dicom), str(tmp_path), workers=1)
    ct = tmp_path / "PHANTOM-001" / "ct.nii.gz"
    os.utime(ct, (0, 0))
    again = json.loads(Path(ingest(str(trees.dicom), str(tmp_path), workers=1)).read_text())
    assert again["summary"] == {"converted": 0, "kept": N, "excluded": 0} and ct.stat().st_mtime == 0
    assert sorted(again["converted"]) == trees.cases, "kept cases stay in the report and the datalist"
    replaced = json.loads(Path(ingest(str(trees.dicom), str(tmp_path), workers=1, overwrite=True)).read_text())
    assert replaced["summary"]["converted"] == N and ct.stat().st_mtime > 0


def test_a_killed_run_leaves_no_half_written_case(trees, tmp_path):
    leftover = tmp_path / f".PHANTOM-001.abc{PARTIAL_SUFFIX}"
    leftover.mkdir(parents=True)
    (leftover / "ct.nii.gz").write_bytes(b"half")
    report = json.loads(Path(ingest(str(trees.dicom), str(tmp_path), workers=1)).read_text())
    assert not leftover.exists() and any(str(leftover) in w for w in report["warnings"])
    assert sorted(p.name for p in tmp_path.iterdir()) == [*trees.cases, "datalist.json", "report.json"]


def _preprocessed(dataset_dir: Path) -> dict[str, torch.Tensor]:
    """Each training case of `dataset_dir`'s datalist after the bundle's preprocessing, read as the training config does."""
    cwd = os.getcwd()
    os.chdir(BUNDLE)  # the configs import configs/common.json relative to the bundle folder
    try:
        parser = ConfigParser()
        parser.read_config("configs/train_autoencoder.json")
        parser.update({"dataset_dir": str(dataset_dir), "image_size": [32, 32, 32]})
        entries = load_decathlon_datalist(parser.get_parsed_content("datalist"), True, "training")
        stored, inputs = (parser.get_parsed_content(k) for k in ("stored_preprocessing", "network_inputs"))
        return {Path(e["image"]).parent.name: inputs(stored(e))["image"] for e in entries}
    finally:
        os.chdir(cwd)


def test_training_configs_read_an_ingested_data_set_as_a_phantom_one(trees):
    ingested, phantoms = (
        json.loads((folder / "datalist.json").read_text()) for folder in (trees.root / "rtstruct", trees.nifti)
    )
    assert ingested == phantoms, "same cases, same seeded split, same entry format"
    from_dicom, from_nifti = _preprocessed(trees.root / "rtstruct"), _preprocessed(trees.nifti)
    assert sorted(from_dicom) == sorted(from_nifti) and from_dicom
    for case, image in from_dicom.items():
        assert tuple(image.shape[-3:]) == (32, 32, 32)
        assert -1.0 <= float(image.min()) < float(image.max()) <= 1.0
        torch.testing.assert_close(image, from_nifti[case], atol=1e-3, rtol=0)


def test_cli_writes_a_dicom_tree_and_ingests_it_with_two_workers(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    commands = (
        ["phantoms", "--out", str(tmp_path / "dicom"), "--n", "2", "--size", "32", "--dicom"],
        ["ingest", "--src", str(tmp_path / "dicom"), "--dst", str(tmp_path / "cases"), "--workers", "2"],
    )
    for command in commands:
        done = subprocess.run(
            [sys.executable, "-m", "scripts", *command], cwd=BUNDLE, env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "cases" / "report.json").read_text())
    assert report["summary"] == {"converted": 2, "kept": 0, "excluded": 0}
    files = list((tmp_path / "dicom").rglob("*.dcm"))
    assert {len(p.relative_to(tmp_path / "dicom").parts) for p in files} == {4}, "patient/study/series/file"
    assert {pydicom.dcmread(p, stop_before_pixels=True).Modality for p in files} == {"CT", "RTSTRUCT", "SEG"}
    for case in ("PHANTOM-001", "PHANTOM-002"):
        assert {p.name for p in (tmp_path / "cases" / case).iterdir()} == {"ct.nii.gz", "label.nii.gz", RECORD}
