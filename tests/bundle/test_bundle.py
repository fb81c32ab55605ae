"""Model Zoo readiness: metadata, workflow properties, file sizes, large_files.yml, exported networks."""

import hashlib
import json
import os
import subprocess
import sys

import monai
import numpy
import pytest
import torch
import yaml
from monai.bundle import ConfigWorkflow

from helpers import BUNDLE, TINY
from scripts.networks.loading import load_controlnet, load_diffusion

REQUIRED_METADATA = (
    "schema",
    "version",
    "changelog",
    "monai_version",
    "pytorch_version",
    "numpy_version",
    "required_packages_version",
    "task",
    "description",
    "authors",
    "copyright",
    "network_data_format",
)


@pytest.fixture(scope="module")
def metadata():
    return json.loads((BUNDLE / "configs" / "metadata.json").read_text())


def test_metadata_has_the_zoo_fields_and_a_changelog_entry_for_its_version(metadata):
    missing = [k for k in REQUIRED_METADATA if not metadata.get(k)]
    assert not missing, f"metadata.json lacks {missing}"
    assert metadata["version"] in metadata["changelog"]
    assert metadata["monai_version"] == monai.__version__
    assert metadata["pytorch_version"] == torch.__version__.split("+")[0]
    assert metadata["numpy_version"] == numpy.__version__


def test_metadata_describes_inputs_and_outputs(metadata):
    formats = metadata["network_data_format"]
    for part in ("inputs", "outputs"):
        for spec in formats[part].values():
            assert {"type", "format", "num_channels", "spatial_shape", "dtype", "value_range"} <= set(spec)
    assert "HU" in json.dumps(formats), "the HU scaling is stated"


def _workflow(configs, kind, overrides):
    cwd = os.getcwd()
    os.chdir(BUNDLE)
    try:
        workflow = ConfigWorkflow(
            config_file=[f"configs/{c}" for c in configs],
            meta_file="configs/metadata.json",
            workflow_type=kind,
            **overrides,
        )
        workflow.initialize()
        return workflow.check_properties()
    finally:
        os.chdir(cwd)


@pytest.mark.parametrize("stage", ["autoencoder", "diffusion", "controlnet"])
def test_training_workflows_have_the_train_properties(trained, phantom_dir, tmp_path, stage):
    overrides = {**TINY, "dataset_dir": str(phantom_dir), "ckpt_dir": str(trained.dir), "cache_dir": str(tmp_path)}
    assert _workflow([f"train_{stage}.json", "demo.json"], "train", overrides) == []


@pytest.mark.parametrize("config", ["inference.json", "inference_tumor.json", "insert_tumor.json"])
def test_inference_workflows_have_the_infer_properties(trained, phantom_dir, config):
    image = str(phantom_dir / "PHANTOM-001" / "ct.nii.gz")  # the CT insert_tumor.json reads
    overrides = {"model_dir": str(trained.dir), "tumor_center_mm": [0.0, 0.0, 0.0], "image": image}
    assert _workflow([config], "infer", overrides) == []


def test_no_tracked_file_in_the_bundle_is_over_25_mb():
    listed = subprocess.run(
        ["git", "ls-files", "bundle"], cwd=BUNDLE.parent, capture_output=True, text=True, check=True
    )
    sizes = {p: (BUNDLE.parent / p).stat().st_size for p in listed.stdout.split() if (BUNDLE.parent / p).is_file()}
    assert sizes and max(sizes.values()) < 25 * 2**20


def test_large_files_list_every_shipped_checkpoint_with_its_hash():
    entries = yaml.safe_load((BUNDLE / "large_files.yml").read_text())["large_files"]
    listed = {e["path"]: e for e in entries}
    shipped = {f"models/demo/{p.name}" for p in (BUNDLE / "models" / "demo").glob("*.pt")}
    assert shipped and shipped == set(listed)
    for path, entry in listed.items():
        assert entry["hash_type"] == "sha256" and entry["url"]
        assert hashlib.sha256((BUNDLE / path).read_bytes()).hexdigest() == entry["hash_val"], f"{path} changed"


def test_exported_networks_match_the_eager_ones(trained, tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "scripts", "export", "--model_dir", str(trained.dir), "--out", str(tmp_path)],
        cwd=BUNDLE,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    unet, record = load_diffusion(trained.dir / "diffusion.pt")
    controlnet, _ = load_controlnet(trained.dir / "controlnet.pt")
    latents, timesteps = torch.randn(3, *record["latent_shape"]), torch.tensor([1, 500, 999])
    exported_unet = torch.export.load(tmp_path / "unet.pt2").module()
    assert torch.allclose(exported_unet(latents, timesteps), unet(latents, timesteps), atol=1e-5), "batch of 3"
    mask = torch.zeros(3, 2, *record["image_size"])
    mask[:, 0, 10:20, 10:20, 10:20] = 1
    exported_controlnet = torch.export.load(tmp_path / "controlnet.pt2").module()
    _, mid = exported_controlnet(latents, timesteps, mask)
    assert torch.allclose(mid, controlnet(latents, timesteps, mask)[1], atol=1e-5)
    decoder = torch.export.load(tmp_path / "decoder.pt2").module()
    assert tuple(decoder(latents).shape) == (3, 1, *record["image_size"])
