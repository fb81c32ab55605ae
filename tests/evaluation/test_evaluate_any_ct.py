"""configs/evaluate_generation.json scores any CT NIfTI in HU: native-grid CTs go through the preprocessing chain,
working-grid samples (as the sampler writes them) are scored as before, files that are not 3D NIfTI are refused."""

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import Dataset
from monai.transforms import Compose, EnsureTyped, LoadImaged, Orientationd, ScaleIntensityRanged

from helpers import TINY, run_bundle
from helpers.corrupt import CORRUPTIONS, preprocessed_phantoms, write_volumes
from scripts.bundle_config import load_bundle_config
from scripts.evaluation.data import sample_items
from scripts.evaluation.quality import judge_files
from scripts.phantoms.thorax import write_phantoms

GRID = TINY["grid_size"]
#: Held-out phantoms on their native grid, not a cube (the trained fixture's phantoms are seed 0).
NATIVE_SIZE = [48, 48, 40]


@pytest.fixture(scope="module")
def native_inputs(tmp_path_factory):
    """Six held-out phantoms on their native grid (a data set folder), six noise CTs on the same grids, six references."""
    phantoms = tmp_path_factory.mktemp("native")
    write_phantoms(str(phantoms), n=6, size=NATIVE_SIZE, seed=1)
    noise = tmp_path_factory.mktemp("noise")
    rng = np.random.default_rng(0)
    for i, ct in enumerate(sorted(phantoms.glob("*/ct.nii.gz"))):
        image = nib.load(ct)
        volume = rng.uniform(-1000.0, 1000.0, image.shape).astype(np.int16)
        nib.save(nib.Nifti1Image(volume, image.affine), noise / f"noise_{i:02d}_ct.nii.gz")
    reference = tmp_path_factory.mktemp("reference")
    write_phantoms(str(reference), n=6, size=GRID, seed=31)
    return phantoms, noise, reference


def _evaluate(trained, samples, reference, out) -> dict:
    """metrics.json of `python -m monai.bundle run --config_file configs/evaluate_generation.json` on `samples`."""
    overrides = {
        "samples_dir": str(samples),
        "reference_dir": str(reference),
        "output_dir": str(out),
        "cache_dir": str(out.parent / "cache"),
        "autoencoder_path": str(trained.dir / "autoencoder.pt"),
    }
    run_bundle(["evaluate_generation.json"], overrides)
    return json.loads((out / "metrics.json").read_text())


def test_native_phantoms_score_below_noise_of_their_grid(trained, native_inputs, tmp_path):
    phantoms, noise, reference = native_inputs
    real = _evaluate(trained, phantoms, reference, tmp_path / "phantoms")
    noisy = _evaluate(trained, noise, reference, tmp_path / "noise")
    assert real["volumes"] == noisy["volumes"] == 6
    assert real["fid_2p5d"] < noisy["fid_2p5d"], (real["fid_2p5d"], noisy["fid_2p5d"])
    quality = json.loads((tmp_path / "phantoms" / "quality.json").read_text())
    assert sorted(quality) == [f"PHANTOM-{i:03d}" for i in range(1, 7)], "a data set's cases are named by case"
    assert real["accepted"]["volumes"] == 6, "the filter judges the phantoms on the working grid, where they pass"
    assert noisy["accepted"]["volumes"] == 0


def test_working_grid_samples_load_and_are_judged_as_before(tmp_path):
    write_phantoms(str(tmp_path / "made"), n=2, size=GRID, seed=32)
    cases = preprocessed_phantoms(tmp_path / "made", GRID)
    rng = np.random.default_rng(0)
    volumes = [cases[0][0], CORRUPTIONS["lungs_moved"](*cases[0], rng), CORRUPTIONS["white_noise"](*cases[1], rng)]
    files = write_volumes(volumes, cases[0][2], tmp_path / "samples", "sample")
    parser = load_bundle_config(
        ["evaluate_generation.json"], {"grid_size": GRID, "samples_dir": str(tmp_path / "samples")}
    )
    batch = parser.get_parsed_content("sample_batch")
    hu_window = parser.get_parsed_content("hu_window")
    before = Compose(  # the samples' loading before they took the preprocessing chain
        [
            LoadImaged("image", ensure_channel_first=True, image_only=True),
            Orientationd("image", axcodes="RAS"),
            ScaleIntensityRanged("image", *hu_window, -1.0, 1.0, clip=True),
            EnsureTyped("image", dtype=torch.float32),
        ]
    )
    expected = torch.stack([torch.as_tensor(d["image"]) for d in Dataset([{"image": str(f)} for f in files], before)])
    assert batch.names == [f.name for f in files]
    assert torch.equal(batch.images, expected), "on the working grid, nothing is re-centred, cleared or resampled"
    judged, judged_before = parser.get_parsed_content("quality"), judge_files(files)
    assert {n: j["reasons"] for n, j in judged.items()} == {n: j["reasons"] for n, j in judged_before.items()}
    for name, judgement in judged.items():
        assert judgement["measures"] == pytest.approx(judged_before[name]["measures"], rel=1e-6), name


def test_a_sample_that_is_not_a_3d_nifti_is_refused_by_name(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((GRID, GRID), np.int16), np.eye(4)), tmp_path / "slice_ct.nii.gz")
    with pytest.raises(ValueError, match=f"{tmp_path}/slice_ct.nii.gz: expected a 3D CT volume, got shape"):
        sample_items(tmp_path)
    (tmp_path / "slice_ct.nii.gz").unlink()
    nib.save(nib.Nifti1Image(np.zeros((GRID, GRID, GRID, 2), np.int16), np.eye(4)), tmp_path / "series_ct.nii.gz")
    with pytest.raises(ValueError, match="series_ct.nii.gz: expected a 3D CT volume, got shape"):
        sample_items(tmp_path)
    (tmp_path / "series_ct.nii.gz").unlink()
    (tmp_path / "notes_ct.nii.gz").write_text("not an image")
    with pytest.raises(ValueError, match="notes_ct.nii.gz: expected a 3D CT volume as NIfTI, but it is not a NIfTI"):
        sample_items(tmp_path)
