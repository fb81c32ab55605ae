"""The MONAI Label app with the shipped demo weights (its default), under a real server."""

import tempfile

import nibabel as nib
import numpy as np
import pytest
from local_server import phantom_study, running_server
from monailabel.client import MONAILabelClient

from helpers import BUNDLE

DEMO = BUNDLE / "models" / "demo"
pytestmark = pytest.mark.skipif(
    not (DEMO / "controlnet.pt").is_file(),
    reason="the demo weights are not trained yet: bundle/models/demo/controlnet.pt is missing",
)


def test_demo_weights_serve_both_tasks_on_the_128_grid(tmp_path):
    study = phantom_study(tmp_path / "studies", size=96, seed=8)
    cases = {"synthesize": {}, "synthesize_tumor": {"foreground": [study.lung_voxel], "tumor_diameter_mm": 40.0}}
    with running_server(tmp_path / "studies", tmp_path / "server.log") as url:
        for model, params in cases.items():
            with tempfile.TemporaryDirectory() as downloads:
                path, info = MONAILabelClient(url, tmpdir=downloads).infer(
                    model, "phantom", {"seed": 7, "num_inference_steps": 10, **params}
                )
                image = nib.load(path)
                hu = np.asanyarray(image.dataobj)
            assert hu.dtype == np.int16 and hu.shape == (128, 128, 128), model
            assert np.allclose(image.header.get_zooms(), [3.5, 3.5, 2.75]), model
            assert (hu < -900).mean() > 0.2 and ((hu > -150) & (hu < 150)).mean() > 0.05, (
                f"{model}: air and soft tissue"
            )
        assert info["tumor_mask"]["voxels"] > 0 and info["placement"] == "lung_box"
