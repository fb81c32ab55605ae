"""`insert_tumor` under the product's server (`python -m monailabel_app.serve`) with the shipped demo weights, driven by
MONAI Label's client: a synthetic tumor inserted into a held-out phantom CT, the user's own grid kept."""

import json
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import requests
from local_server import running_server
from monailabel.client import MONAILabelClient
from monailabel.client.client import MONAILabelClientException
from scipy import ndimage
from synthesis_client import INSERT_TASK, Synthesis, request_params, synthesize

from helpers import BUNDLE
from scripts.data.labels import LABELS
from scripts.phantoms.thorax import write_phantoms
from scripts.sampling.insertion import blob_on_grid

pytestmark = pytest.mark.skipif(
    not (BUNDLE / "models" / "demo" / "controlnet.pt").is_file(),
    reason="the demo weights are not trained yet: bundle/models/demo/controlnet.pt is missing",
)

STEPS, MARGIN_MM, DIAMETER_MM, SEED = 10, 10.0, 30.0, 3
#: Soft tissue is above -300 HU (aerated lung is below); at least this share of the tumor must become it.
TISSUE_HU, TISSUE_SHARE = -300, 0.6
#: Least Dice of the demo segmenter's structures, on the user's grid, against the phantom's own labels.
LUNGS_DICE, HEART_DICE = 0.9, 0.8


@dataclass(frozen=True)
class HeldOut:
    """A phantom CT the demo weights never saw, as the server's study `phantom`: its file, HU, affine and labels."""

    path: Path
    hu: np.ndarray
    affine: np.ndarray
    label: np.ndarray

    @property
    def lung_voxel(self) -> list[int]:
        """A voxel inside the lungs."""
        lungs = np.argwhere(self.label == LABELS["lungs"])
        return lungs[len(lungs) // 2].tolist()

    @property
    def air_voxel(self) -> list[int]:
        """A voxel of air in front of the chest, 6 voxels (23 mm) from the skin, inside the model's field of view."""
        i, _, k = self.lung_voxel
        return [i, int(np.argmax(self.label[i, :, k] > 0)) - 6, k]


@pytest.fixture(scope="module")
def held_out(tmp_path_factory) -> HeldOut:
    """Phantom seed 99 (128 x 128 x 64 voxels of 3.8 x 3.8 x 4.9 mm), copied to a studies folder as `phantom`."""
    root = tmp_path_factory.mktemp("held_out")
    write_phantoms(str(root / "cases"), n=1, size=[128, 128, 64], seed=99)
    (root / "studies").mkdir()
    path = Path(shutil.copy(root / "cases" / "PHANTOM-001" / "ct.nii.gz", root / "studies" / "phantom.nii.gz"))
    ct = nib.load(path)
    label = np.asanyarray(nib.load(root / "cases" / "PHANTOM-001" / "label.nii.gz").dataobj)
    return HeldOut(path, np.asanyarray(ct.dataobj), ct.affine, label)


@pytest.fixture(scope="module")
def server(held_out, tmp_path_factory) -> str:
    """The product's server on loopback with its defaults (the demo weights), at most 25 steps."""
    log = tmp_path_factory.mktemp("server") / "server.log"
    with running_server(held_out.path.parent, log, {"max_inference_steps": "25"}, serve=[]) as url:
        yield url


@pytest.fixture(scope="module")
def inserted(server, held_out, tmp_path_factory) -> Synthesis:
    """The held-out CT uploaded as the Slicer client does, with one click in a lung."""
    params = request_params(SEED, STEPS, None, [held_out.lung_voxel], DIAMETER_MM, MARGIN_MM)
    return synthesize(server, INSERT_TASK, params, tmp_path_factory.mktemp("out"), image_file=held_out.path)


def voxels(path: Path) -> np.ndarray:
    """The voxels of a NIfTI file."""
    return np.asanyarray(nib.load(path).dataobj)


def refusal(url: str, params: dict, uploads: dict[str, Path]) -> tuple[int, str]:
    """The status and detail of a request that the server must refuse, sent through MONAI Label's client: on the study
    `phantom` unless `uploads` has a `file`, with the `label` of `uploads` if any."""
    label, file = uploads.get("label"), uploads.get("file")
    with tempfile.TemporaryDirectory() as downloads, pytest.raises(MONAILabelClientException) as refused:
        MONAILabelClient(url, tmpdir=downloads).infer(
            INSERT_TASK,
            "" if file else "phantom",
            {"num_inference_steps": STEPS, **params},
            label_in=str(label) if label else None,
            file=str(file) if file else None,
        )
    status, body = re.fullmatch(r"Status: (\d+); Response: (.*)", refused.value.msg, re.DOTALL).groups()
    return int(status), json.loads(body)["detail"]


def test_info_offers_insert_tumor_with_its_defaults(server):
    task = requests.get(f"{server}/info/", timeout=30).json()["models"]["insert_tumor"]
    assert task["config"] == {
        "seed": 0,
        "sampler": "rflow",
        "num_inference_steps": 10,
        "tumor_diameter_mm": 30.0,
        "blend_margin_mm": 10.0,
    }
    assert task["max_inference_steps"] == 25


def test_the_answer_is_the_users_ct_on_its_grid_with_the_clicked_tumor(inserted, held_out):
    ct, mask = nib.load(inserted.ct_path), nib.load(inserted.mask_path)
    assert ct.get_data_dtype() == np.int16 and ct.shape == held_out.hu.shape
    assert np.array_equal(ct.affine, held_out.affine) and np.array_equal(mask.affine, held_out.affine)
    click = held_out.lung_voxel
    expected = blob_on_grid(
        held_out.hu.shape, held_out.affine, (held_out.affine @ [*click, 1.0])[:3], DIAMETER_MM, SEED
    )
    assert mask.get_data_dtype() == np.uint8 and np.array_equal(voxels(inserted.mask_path), expected)
    info = inserted.info
    assert info["task"] == "insert_tumor" and info["tumor_source"] == "foreground" and info["unit"] == "HU"
    assert info["shape"] == list(held_out.hu.shape) and info["num_inference_steps"] == STEPS
    assert info["blend_margin_mm"] == MARGIN_MM and info["insertion"]["mask_voxels"] == int(expected.sum())
    assert "request" not in info["insertion"], "the server's file paths stay on the server"


def test_the_structures_lie_on_the_users_grid_with_the_tumor_as_gtv_1(inserted, held_out):
    structures = nib.load(inserted.structures_path)
    ids, tumor = voxels(inserted.structures_path), voxels(inserted.mask_path) > 0
    assert structures.shape == held_out.hu.shape and np.array_equal(structures.affine, held_out.affine)
    assert np.array_equal(ids == LABELS["gtv_1"], tumor), "GTV-1 is the inserted tumor exactly"
    assert inserted.info["structures_labels"]["Lungs"] == LABELS["lungs"]
    for structure, least in (("lungs", LUNGS_DICE), ("heart", HEART_DICE)):
        found, truth = ids == LABELS[structure], (held_out.label == LABELS[structure]) & ~tumor
        dice = 2 * (found & truth).sum() / (found.sum() + truth.sum())
        assert dice >= least, f"{structure}: Dice {dice:.3f} against the phantom's own labels"


def test_only_the_tumor_and_its_margin_changed_and_the_tumor_is_tissue(inserted, held_out):
    hu, mask = voxels(inserted.ct_path), voxels(inserted.mask_path) > 0
    spacing = np.sqrt((held_out.affine[:3, :3] ** 2).sum(0))
    far = ndimage.distance_transform_edt(~mask, sampling=spacing) > MARGIN_MM + spacing.max()
    assert np.array_equal(hu[far], held_out.hu[far]), "every voxel beyond the margin is the user's"
    assert not np.array_equal(hu, held_out.hu), "the tumor was inserted"
    share = float((hu[mask] > TISSUE_HU).mean())
    assert share >= TISSUE_SHARE, f"{share:.2f} of the tumor is soft tissue"
    assert inserted.info["insertion"]["mask_soft_tissue_fraction"] == pytest.approx(share)
    assert inserted.info["insertion"]["unchanged_fraction_outside_margin"] == 1.0


def test_a_label_drawn_on_the_image_gives_the_same_insertion(server, inserted, held_out, tmp_path):
    params = request_params(SEED, STEPS, blend_margin_mm=MARGIN_MM)
    again = synthesize(server, INSERT_TASK, params, tmp_path, image_file=held_out.path, label_file=inserted.mask_path)
    assert again.info["tumor_source"] == "label"
    assert np.array_equal(voxels(again.mask_path), voxels(inserted.mask_path))
    assert np.array_equal(voxels(again.ct_path), voxels(inserted.ct_path)), "same tumor, seed and settings"


@pytest.fixture(scope="module")
def bad_uploads(held_out, tmp_path_factory) -> dict[str, dict[str, Path]]:
    """Uploads for refused requests: a binary label of 10 x 10 x 10 voxels (not the image's grid), and a CT of
    water (no lungs) of 40 x 40 x 40 voxels of 7 mm."""
    folder = tmp_path_factory.mktemp("bad")
    nib.save(nib.Nifti1Image(np.ones((10, 10, 10), np.uint8), held_out.affine), folder / "small.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((40, 40, 40), np.int16), np.diag([7.0, 7.0, 7.0, 1.0])), folder / "water.nii.gz")
    return {
        "none": {},
        "small label": {"label": folder / "small.nii.gz"},
        "water CT": {"file": folder / "water.nii.gz"},
    }


#: params (from the held-out case), the uploads (bad_uploads' key), and the refusal's start.
BAD_REQUESTS = {
    "click outside the image": (lambda case: {"foreground": [[1e9, 0, 0]]}, "none", "foreground: point 0"),
    "diameter out of range": (
        lambda case: {"foreground": [case.lung_voxel], "tumor_diameter_mm": 1e6},
        "none",
        "tumor_diameter_mm: must be between",
    ),
    "blend margin out of range": (
        lambda case: {"foreground": [case.lung_voxel], "blend_margin_mm": 80.0},
        "none",
        "blend_margin_mm: must be between 0.0 and 50.0",
    ),
    "tumor leaving the model's field of view": (
        lambda case: {"foreground": [[0, 0, 0]]},
        "none",
        "foreground: the tumor leaves the model's field of view",
    ),
    "tumor outside the body": (
        lambda case: {"foreground": [case.air_voxel], "tumor_diameter_mm": 10.0},
        "none",
        "foreground: the tumor lies outside the body",
    ),
    "neither click nor label": (lambda case: {}, "none", "foreground: give either"),
    "label of the wrong shape": (lambda case: {}, "small label", "label: has shape [10, 10, 10]"),
    "image without lungs": (lambda case: {"foreground": [[20, 20, 20]]}, "water CT", "image: no lungs found"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_requests_are_refused_naming_the_parameter(server, held_out, bad_uploads, case):
    params, uploads, start = BAD_REQUESTS[case]
    status, detail = refusal(server, params(held_out), bad_uploads[uploads])
    assert status == 400 and detail.startswith(start), detail
