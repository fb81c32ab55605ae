"""The evaluation workflows end to end through `python -m monai.bundle run`: report folders with sane values, clear errors."""

import csv
import json
import re

import nibabel as nib
import numpy as np
import pytest
from monai.data import Dataset
from monai.transforms import LoadImaged

from helpers import TINY, run_bundle
from helpers.corrupt import CORRUPTIONS, preprocessed_phantoms, write_volumes
from scripts.evaluation.data import reference_items, stack_images
from scripts.phantoms.thorax import write_phantoms

GRID = TINY["grid_size"]


def _report_figures(folder) -> list[str]:
    """The PNG files report.md shows, each checked to exist."""
    names = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", (folder / "report.md").read_text())
    assert names and all((folder / n).is_file() and (folder / n).stat().st_size > 1000 for n in names)
    return names


def test_autoencoder_evaluation_writes_the_thesis_tables_and_figures(trained, phantom_dir, tmp_path):
    out = tmp_path / "report"
    overrides = {"dataset_dir": str(phantom_dir), "output_dir": str(out), "cache_dir": str(tmp_path / "cache")}
    run_bundle(["evaluate_autoencoder.json"], {**overrides, "autoencoder_path": str(trained.dir / "autoencoder.pt")})
    for name in ("metrics.json", "metrics.csv", "metrics.md", "cases.csv", "cases.md"):
        assert (out / name).is_file(), name
    figures = _report_figures(out)
    assert {"latent_tsne.png", "interpolation.png", "reconstruction_train_0.png", "reconstruction_test_0.png"} <= set(
        figures
    )
    datalist = json.loads((phantom_dir / "datalist.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    assert metrics["cases"] == {"train": len(datalist["training"]), "test": len(datalist["test"])}
    cases = list(csv.DictReader(open(out / "cases.csv")))
    assert len(cases) == len(datalist["training"]) + len(datalist["test"])
    for case in cases:
        mse, psnr, ssim = float(case["mse_hu2"]), float(case["psnr_db"]), float(case["ssim"])
        assert 0 < mse < 2000.0**2 and psnr > 0
        assert psnr == pytest.approx(10 * np.log10(2000.0**2 / mse), abs=1e-3), (
            "MSE is in HU^2 and PSNR's peak is the window width"
        )
        assert (
            -1.0 <= ssim <= 1.0 and float(case["kl"]) > 0 and case["perceptual"] == "n/a"
        )  # two iterations: SSIM near 0
    train_mse = np.mean([float(c["mse_hu2"]) for c in cases if c["split"] == "train"])
    assert metrics["mse_hu2"]["train"] == pytest.approx(train_mse, rel=1e-4)
    table = (out / "metrics.md").read_text()
    assert "| MSE (HU^2) |" in table and "| Perceptual loss | n/a | n/a |" in table
    assert "Perceptual loss: not computed, no weights on disk" in (out / "report.md").read_text()


def test_autoencoder_evaluation_names_a_missing_datalist(trained, tmp_path):
    done = run_bundle(
        ["evaluate_autoencoder.json"],
        {
            "dataset_dir": str(tmp_path),
            "output_dir": str(tmp_path / "out"),
            "autoencoder_path": str(trained.dir / "autoencoder.pt"),
        },
        check=False,
    )
    assert done.returncode != 0 and f"{tmp_path}/datalist.json" in done.stdout + done.stderr


@pytest.fixture(scope="module")
def generation_inputs(tmp_path_factory):
    """A samples folder (four phantoms, then noise, blotchy noise, air only, a body without lungs) and six reference phantoms."""
    reference = tmp_path_factory.mktemp("reference")
    write_phantoms(str(reference), n=6, size=GRID, seed=31)
    made = tmp_path_factory.mktemp("made")
    write_phantoms(str(made), n=4, size=GRID, seed=32)
    cases = preprocessed_phantoms(made, GRID)
    rng = np.random.default_rng(0)
    broken = [
        CORRUPTIONS[k](*c, rng) for k, c in zip(("white_noise", "smooth_noise", "air_only", "lungs_filled"), cases)
    ]
    samples = tmp_path_factory.mktemp("samples")
    write_volumes([c[0] for c in cases] + broken, cases[0][2], samples, "sample")
    return samples, reference


def test_generation_evaluation_reports_all_accepted_and_real_vs_real(trained, generation_inputs, tmp_path):
    samples, reference = generation_inputs
    out = tmp_path / "report"
    overrides = {
        "samples_dir": str(samples),
        "reference_dir": str(reference),
        "output_dir": str(out),
        "cache_dir": str(tmp_path / "cache"),
    }
    run_bundle(["evaluate_generation.json"], {**overrides, "autoencoder_path": str(trained.dir / "autoencoder.pt")})
    metrics = json.loads((out / "metrics.json").read_text())
    assert "autoencoder encoder" in metrics["feature_network"]
    assert (metrics["volumes"], metrics["accepted"]["volumes"], metrics["real_vs_real"]["volumes"]) == (8, 4, 3)
    for row in (metrics, metrics["accepted"], metrics["real_vs_real"]):
        assert row["fid_2p5d"] > 0 and -1.0 <= row["ssim_diversity"] <= 1.0 and 0.0 <= row["ms_ssim_diversity"] <= 1.0
        assert np.isfinite(row["mmd"])
    assert metrics["accepted"]["fid_2p5d"] < metrics["fid_2p5d"], "dropping the failures brings FID down"
    assert (
        metrics["settings"]["ms_ssim"]["kernel_size"] == [7, 7, 7]
        and len(metrics["settings"]["ms_ssim"]["weights"]) == 3
    )
    quality = json.loads((out / "quality.json").read_text())
    assert [name for name, j in quality.items() if not j["accept"]] == [
        f"sample_{i:02d}_ct.nii.gz" for i in range(4, 8)
    ]
    assert not (samples / "quality.json").exists(), "the evaluation leaves the samples folder as it was"
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert [r["set"] for r in rows] == ["all samples", "accepted samples", "real vs real"]
    assert float(rows[0]["fid_2p5d"]) == pytest.approx(metrics["fid_2p5d"], rel=1e-5)
    assert _report_figures(out) == ["tsne.png"]
    report = (out / "report.md").read_text()
    assert "4 of 8 samples accepted" in report and "| real vs real |" in report


def test_generation_evaluation_names_an_empty_samples_folder(trained, tmp_path, generation_inputs):
    _, reference = generation_inputs
    overrides = {"samples_dir": str(tmp_path), "reference_dir": str(reference), "output_dir": str(tmp_path / "out")}
    done = run_bundle(
        ["evaluate_generation.json"],
        {**overrides, "autoencoder_path": str(trained.dir / "autoencoder.pt")},
        check=False,
    )
    assert done.returncode != 0 and f"no *_ct.nii.gz files in {tmp_path}" in done.stdout + done.stderr


def test_reference_datalist_with_empty_splits(tmp_path):
    write_phantoms(str(tmp_path), n=2, size=32, seed=5, val_fraction=0.0, test_fraction=0.0)
    assert json.loads((tmp_path / "datalist.json").read_text())["test"] == []
    assert sorted(item["image"].split("/")[-2] for item in reference_items(tmp_path)) == ["PHANTOM-001", "PHANTOM-002"]


def test_reference_folder_of_nifti_and_input_checks(generation_inputs, tmp_path):
    samples, reference = generation_inputs
    from_datalist = reference_items(reference)
    assert len(from_datalist) == 6 and all(item["image"].endswith("ct.nii.gz") for item in from_datalist)
    from_folder = reference_items(samples)
    assert [i["case"] for i in from_folder] == [f"sample_{i:02d}_ct" for i in range(8)]
    with pytest.raises(ValueError, match=f"no reference CTs in {tmp_path}"):
        reference_items(tmp_path)
    with pytest.raises(FileNotFoundError, match="reference_dir not found"):
        reference_items(tmp_path / "absent")
    nib.save(nib.Nifti1Image(np.zeros((GRID, GRID, GRID // 2), np.int16), np.eye(4)), tmp_path / "flat_ct.nii.gz")
    loaded = Dataset(
        [{"image": str(tmp_path / "flat_ct.nii.gz"), "case": "flat"}], LoadImaged("image", ensure_channel_first=True)
    )
    with pytest.raises(
        ValueError, match=r"sample flat has shape \(32, 32, 16\) after loading, expected \(32, 32, 32\)"
    ):
        stack_images(loaded, [GRID] * 3, "sample")
