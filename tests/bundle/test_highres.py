"""Clinical resolution end to end: every stage with configs/highres.json at 512 x 512 x 128, tiny channels, one epoch.

The phantoms are rendered coarser (128 x 128 x 40) and the bundle's preprocessing resamples them onto the
0.875 x 0.875 x 2.75 mm working grid, as it does real CTs.
"""

from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch

from helpers import run_bundle

GRID = [512, 512, 128]

#: highres.json's layout (3 autoencoder levels, 4 U-Net levels) with channels a CPU trains in seconds.
TINY_HIGHRES = {
    "autoencoder_channels": [4, 8, 8],
    "autoencoder_norm_num_groups": 4,
    "discriminator_channels": 4,
    "patch_size": [64, 64, 32],
    "diffusion_channels": [8, 8, 8, 8],
    "diffusion_norm_num_groups": 4,
    "diffusion_num_head_channels": [0, 0, 8, 8],
    "controlnet_embedding_channels": [4, 8, 8],
    "num_workers": 0,
    "max_epochs": 1,
    "val_interval": 1,
}


@pytest.fixture(scope="module")
def highres(tmp_path_factory) -> Path:
    """Checkpoints of the three stages trained one epoch each with highres.json, in one folder."""
    from scripts.phantoms.thorax import write_phantoms

    root = tmp_path_factory.mktemp("highres")
    write_phantoms(str(root / "data"), n=3, size=[128, 128, 40], seed=3)
    overrides = {
        **TINY_HIGHRES,
        "dataset_dir": str(root / "data"),
        "ckpt_dir": str(root / "models"),
        "log_dir": str(root / "logs"),
        "cache_dir": str(root / "cache"),
    }
    for stage in ("autoencoder", "diffusion", "controlnet"):
        run_bundle([f"train_{stage}.json", "highres.json"], overrides)
    return root


def test_every_stage_records_the_clinical_grid_and_the_autoencoder_its_patches(highres):
    records = {
        name: torch.load(highres / "models" / f"{name}.pt", weights_only=True)[f"{name}_record"]
        for name in ("autoencoder", "diffusion")
    }
    assert records["autoencoder"]["image_size"] == GRID and records["autoencoder"]["patch_size"] == [64, 64, 32]
    assert records["autoencoder"]["image_spacing_mm"] == [0.875, 0.875, 2.75]
    assert records["diffusion"]["image_size"] == GRID and records["diffusion"]["latent_shape"] == [4, 128, 128, 32]
    assert (highres / "models" / "controlnet.pt").is_file()
    cached = [torch.load(p, weights_only=True) for p in (highres / "cache").glob("*.pt")]
    assert cached and all(
        c["image"].dtype == torch.int16 and tuple(c["image"].shape[1:]) == tuple(GRID) for c in cached
    )


def test_inference_writes_the_clinical_grid_as_nifti_and_a_dicom_series(highres):
    out = highres / "samples"
    run_bundle(
        ["inference.json"],
        {
            "model_dir": str(highres / "models"),
            "output_dir": str(out),
            "num_inference_steps": 2,
            "dicom": True,
            "structures": False,
        },
    )
    image = nib.load(out / "sample_seed0_ct.nii.gz")
    assert image.shape == tuple(GRID) and image.get_data_dtype() == np.int16
    assert np.allclose(image.header.get_zooms(), [0.875, 0.875, 2.75])
    slices = sorted((out / "sample_seed0_dicom" / "CT").glob("*.dcm"))
    assert len(slices) == 128
    first = pydicom.dcmread(slices[0])
    assert (first.Rows, first.Columns) == (512, 512)
    assert [float(s) for s in first.PixelSpacing] == [0.875, 0.875] and float(first.SliceThickness) == 2.75
