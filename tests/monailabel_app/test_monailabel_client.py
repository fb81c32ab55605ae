"""The Slicer client's logic that needs no Slicer, and the app's request rules that need no server."""

import os
import tempfile

import nibabel as nib
import numpy as np
import pytest
from synthesis_client import ras_to_voxel, request_params, save_mask

from lib.app_conf import DEFAULT_BUNDLE_DIR, app_conf
from lib.request_files import is_upload
from lib.result import mask_payload


def test_ras_point_becomes_the_voxel_the_server_expects():
    angle = np.deg2rad(20.0)
    affine = np.array(
        [
            [0.8 * np.cos(angle), -0.8 * np.sin(angle), 0, -120.0],
            [0.8 * np.sin(angle), 0.8 * np.cos(angle), 0, 40.0],
            [0, 0, 2.5, -300.0],
            [0, 0, 0, 1],
        ]
    )
    voxel = [100.0, 37.5, 12.0]
    ras = (affine @ [*voxel, 1.0])[:3]
    assert np.allclose(ras_to_voxel(ras, np.linalg.inv(affine)), voxel)


def test_request_params_hold_only_what_is_set():
    assert request_params(3, 25) == {"seed": 3, "num_inference_steps": 25}
    assert request_params(3) == {"seed": 3}, "the server picks the sampler and steps left out"
    tumor = request_params(3, 25, "ddpm", foreground=[(1, 2, 3)], tumor_diameter_mm=40)
    assert (
        tumor["foreground"] == [[1.0, 2.0, 3.0]] and tumor["tumor_diameter_mm"] == 40.0 and tumor["sampler"] == "ddpm"
    )
    assert "blend_margin_mm" not in tumor and request_params(3, 25, blend_margin_mm=5)["blend_margin_mm"] == 5.0


def test_mask_sent_by_the_server_is_the_mask_the_client_saves(tmp_path):
    mask = np.zeros((12, 10, 8), np.uint8)
    mask[3:6, 4:7, 2:5] = 1
    affine = np.diag([7.0, 7.0, 5.5, 1.0])
    affine[:3, 3] = [-40.0, 12.0, -3.0]
    payload = mask_payload(mask, affine)
    assert payload["voxels"] == 27
    saved = nib.load(save_mask({"tumor_mask": payload}, tmp_path / "mask.nii.gz"))
    assert np.array_equal(np.asanyarray(saved.dataobj), mask) and np.allclose(saved.affine, affine)
    assert save_mask({}, tmp_path / "none.nii.gz") is None and not (tmp_path / "none.nii.gz").exists()
    with pytest.raises(ValueError, match="nifti-gz-base64"):
        save_mask({"tumor_mask": {**payload, "format": "rle"}}, tmp_path / "other.nii.gz")


def test_only_the_endpoints_own_uploads_count_as_uploads(tmp_path):
    with tempfile.NamedTemporaryFile(suffix=".nii.gz") as upload:
        assert is_upload(upload.name)
        link = os.path.join(tempfile.gettempdir(), "tmplinklink.nii.gz")
        os.symlink(upload.name, link)
        try:
            assert not is_upload(link), "a link planted in the temporary folder"
        finally:
            os.remove(link)
        assert not is_upload(
            upload.name.replace(
                tempfile.gettempdir(), f"{tempfile.gettempdir()}/../{os.path.basename(tempfile.gettempdir())}"
            )
        )
    elsewhere = tmp_path / "tmpabcdefgh.nii.gz"
    elsewhere.write_bytes(b"")
    with tempfile.NamedTemporaryFile(suffix=".txt") as text:
        assert not is_upload(str(elsewhere)) and not is_upload(text.name) and not is_upload(None)


@pytest.mark.parametrize(
    "conf, match",
    [
        ({"modeldir": "x"}, "unknown --conf keys"),
        ({"max_inference_steps": "0"}, "max_inference_steps"),
        ({"max_inference_steps": "lots"}, "max_inference_steps"),
        ({"model_dir": "/no/such/folder"}, "model_dir"),
        ({"bundle_dir": "/tmp"}, "bundle_dir"),
    ],
)
def test_bad_conf_is_refused_naming_the_key(conf, match):
    with pytest.raises(ValueError, match=match):
        app_conf(conf)


def test_default_conf_serves_this_bundle():
    conf = app_conf({})
    assert conf.bundle_dir == DEFAULT_BUNDLE_DIR and conf.model_dir is None and conf.max_inference_steps == 200
