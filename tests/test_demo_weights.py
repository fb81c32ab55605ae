"""The shipped demo weights: small, and sampling them with the documented command gives a CT-like volume."""

import nibabel as nib
import numpy as np
from conftest import BUNDLE, run_bundle
from scipy import ndimage
from scripts.networks import default_model_dir

DEMO = BUNDLE / "models" / "demo"


def test_demo_weights_are_small():
    sizes = [p.stat().st_size for p in DEMO.glob("*.pt")]
    assert len(sizes) == 2 and sum(sizes) < 25 * 2**20


def test_default_model_dir_prefers_trained_weights_over_the_demo(tmp_path):
    (tmp_path / "models" / "demo").mkdir(parents=True)
    assert default_model_dir(tmp_path) == tmp_path / "models" / "demo"
    (tmp_path / "models" / "autoencoder.pt").touch()
    assert default_model_dir(tmp_path) == tmp_path / "models" / "demo", "both stages are needed"
    (tmp_path / "models" / "diffusion.pt").touch()
    assert default_model_dir(tmp_path) == tmp_path / "models"


def _sample(output_dir):
    overrides = {"model_dir": str(DEMO), "output_dir": str(output_dir), "num_samples": 1, "seed": 7}
    run_bundle(["inference.json"], {**overrides, "sampler": "ddim", "num_inference_steps": 10})
    image = nib.load(output_dir / "sample_seed7_ct.nii.gz")
    return image, np.asanyarray(image.dataobj)


def test_demo_sample_is_ct_like_and_reproducible(tmp_path):
    image, hu = _sample(tmp_path / "first")
    _, again = _sample(tmp_path / "second")
    assert np.array_equal(hu, again), "the same seed gives the same volume"
    assert hu.dtype == np.int16 and hu.shape == (64, 64, 64)
    assert np.allclose(np.diag(image.affine)[:3], [7.0, 7.0, 5.5])
    body = ndimage.binary_fill_holes(hu > -400)
    body = ndimage.binary_opening(body, iterations=2)
    assert (hu < -900).mean() > 0.2, "air around the patient"
    assert 0.1 < body.mean() < 0.8, "a body"
    soft = ((hu > -150) & (hu < 150))[body].mean()
    lungs = ((hu > -1000) & (hu < -600))[body].mean()
    assert soft > 0.25, f"soft tissue fills much of the body ({soft:.2f})"
    assert lungs > 0.05, f"air-filled lungs inside the body ({lungs:.2f})"
