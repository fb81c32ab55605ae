"""The MONAI Label app under a real server on 127.0.0.1, driven by MONAI Label's client and plain HTTP (tiny trained models).

Most tests use `monailabel start_server`; the serving tests use MONAI Label's bare uvicorn command with CORS set.
Both are unhardened; test_serve.py covers the product's server, `python -m monailabel_app.serve`.
"""

import json
import tempfile
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import requests
from local_server import PhantomStudy, phantom_study, running_server
from monailabel.client import MONAILabelClient
from synthesis_client import TASK, TUMOR_TASK, request_params, save_mask, synthesize

from scripts.data.labels import LABELS
from scripts.data.volumes import centred_affine
from scripts.networks.checkpoint import load_checkpoint
from scripts.sampling.tumor_request import mask_from_centre
from scripts.transforms.preprocess import preprocessing_chain

STEPS, MAX_STEPS = 3, 20
LONG_STEPS = 200  # the served app's cap: a generation of seconds, not of tenths of one
CONFIGURED_ORIGIN = "http://127.0.0.1:3000"


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> PhantomStudy:
    """A 64-voxel phantom CT as the server's only study (`phantom`), with a voxel inside its lungs."""
    return phantom_study(tmp_path_factory.mktemp("studies"))


@pytest.fixture(scope="module")
def conf(trained) -> dict:
    """The app's --conf: the tiny models and a step cap of 20."""
    return {"model_dir": str(trained.dir), "max_inference_steps": str(MAX_STEPS)}


@pytest.fixture(scope="module")
def server(conf, phantom, tmp_path_factory) -> str:
    """`monailabel start_server` for the app."""
    with running_server(phantom.path.parent, tmp_path_factory.mktemp("server") / "server.log", conf) as url:
        yield url


@pytest.fixture(scope="module")
def served(conf, phantom, tmp_path_factory) -> str:
    """MONAI Label's bare uvicorn command: its settings in the environment, CORS origins set, a step cap of 200."""
    with running_server(
        phantom.path.parent,
        tmp_path_factory.mktemp("served") / "server.log",
        {**conf, "max_inference_steps": str(LONG_STEPS)},
        cors_origins=[CONFIGURED_ORIGIN],
    ) as url:
        yield url


@pytest.fixture(scope="module")
def record(trained) -> dict:
    """The tiny diffusion model's record: the working grid."""
    return load_checkpoint(trained.dir / "diffusion.pt", ("diffusion_record",))["diffusion_record"]


def infer(
    url: str, model: str, params: dict, image: str = "phantom", **files
) -> tuple[nib.Nifti1Image, np.ndarray, dict]:
    """One request through MONAI Label's client: the CT image (in memory), its voxels, the JSON.

    The client saves the result under the server's file name; on the server's machine that must not
    be the server's temporary folder, where the server deletes that name once sent.
    """
    with tempfile.TemporaryDirectory() as downloads:
        path, info = MONAILabelClient(url, tmpdir=downloads).infer(
            model, image, {"num_inference_steps": STEPS, **params}, **files
        )
        ct = nib.load(path)
        hu = np.asanyarray(ct.dataobj)
        return nib.Nifti1Image(hu, ct.affine, ct.header), hu, info


def decoded_mask(info: dict, tmp_path: Path) -> nib.Nifti1Image:
    """The tumor mask the JSON carries."""
    return nib.load(save_mask(info, tmp_path / "mask.nii.gz"))


def world(voxel, affine) -> np.ndarray:
    """RAS mm of a voxel position under `affine`."""
    return (np.asarray(affine) @ [*voxel, 1.0])[:3]


def test_info_lists_the_tasks(server):
    info = requests.get(f"{server}/info/", timeout=30).json()
    assert set(info["models"]) == {"synthesize", "synthesize_tumor", "insert_tumor"}
    assert info["models"]["synthesize"]["config"] == {"seed": 0, "sampler": "ddim", "num_inference_steps": MAX_STEPS}
    assert info["models"]["synthesize_tumor"]["config"]["tumor_diameter_mm"] == 30.0
    assert info["models"]["synthesize_tumor"]["max_inference_steps"] == MAX_STEPS


def test_synthesize_writes_int16_hu_whatever_dtype_is_asked(server, record):
    ct, hu, info = infer(server, "synthesize", {"seed": 4, "result_dtype": "uint8", "result_extension": ".nrrd"})
    assert hu.dtype == np.int16 and hu.shape == tuple(record["image_size"])
    assert np.allclose(ct.header.get_zooms(), record["image_spacing_mm"])
    assert np.allclose(ct.affine, centred_affine(hu.shape, record["image_spacing_mm"]))
    assert -1000 <= hu.min() < 0 and hu.max() <= 1000 and hu.std() > 1.0
    assert info["num_inference_steps"] == STEPS and info["unit"] == "HU" and "tumor_mask" not in info


def test_same_seed_same_volume_and_the_image_is_not_read(server):
    _, first, _ = infer(server, "synthesize", {"seed": 7})
    _, again, _ = infer(server, "synthesize", {"seed": 7}, image="no-such-image")
    _, other, _ = infer(server, "synthesize", {"seed": 8}, image="/etc/hostname")
    assert np.array_equal(first, again), "same seed, same volume, whatever image id"
    assert not np.array_equal(first, other), "another seed, another volume"


def test_click_on_a_user_ct_maps_by_world_position_in_its_lung_box(server, phantom, record, tmp_path):
    params = {"seed": 2, "foreground": [phantom.lung_voxel], "tumor_diameter_mm": 50.0}
    ct, hu, info = infer(server, "synthesize_tumor", params)
    lung_box = np.asarray(preprocessing_chain(record["image_size"])[0]({"image": str(phantom.path)})["image"].affine)
    assert info["placement"] == "lung_box" and np.allclose(ct.affine, lung_box, atol=1e-3)
    mask = decoded_mask(info, tmp_path)
    assert np.allclose(mask.affine, ct.affine) and mask.shape == hu.shape
    clicked = world(phantom.lung_voxel, phantom.affine)
    centroid = world(np.argwhere(np.asanyarray(mask.dataobj)).mean(0), mask.affine)
    assert np.linalg.norm(centroid - clicked) < 10.0, "the tumor sits at the clicked world position"
    centred = (centred_affine(hu.shape, record["image_spacing_mm"]) @ np.linalg.solve(ct.affine, [*clicked, 1.0]))[:3]
    expected, _ = mask_from_centre(record, centred, 50.0, seed=2)
    assert np.array_equal(np.asanyarray(mask.dataobj), expected)
    assert set(info["adherence"]) >= {"dice", "mask_in_lungs_fraction"}
    _, again, info_again = infer(server, "synthesize_tumor", params)
    assert np.array_equal(hu, again) and info_again["tumor_mask"] == info["tumor_mask"], "seeded"


def test_click_and_label_on_a_generated_volume_are_voxel_exact(server, record, tmp_path):
    generated = tmp_path / "generated.nii.gz"
    ct, hu, _ = infer(server, "synthesize", {"seed": 11})
    nib.save(ct, generated)
    voxel = [10, 12, 14]
    tumor_ct, _, info = infer(
        server,
        "synthesize_tumor",
        {"seed": 5, "foreground": [voxel], "tumor_diameter_mm": 40.0},
        image="",
        file=str(generated),
    )
    assert info["placement"] == "working_grid" and np.array_equal(tumor_ct.affine, ct.affine)
    mask = np.asanyarray(decoded_mask(info, tmp_path).dataobj)
    expected, _ = mask_from_centre(
        record, world(voxel, centred_affine(hu.shape, record["image_spacing_mm"])), 40.0, seed=5
    )
    assert mask[tuple(voxel)] == 1 and np.array_equal(mask, expected), "the clicked voxel is the tumor's centre voxel"
    label = tmp_path / "label.nii.gz"
    nib.save(nib.Nifti1Image(mask, ct.affine), label)
    _, _, from_label = infer(
        server, "synthesize_tumor", {"seed": 5}, image="", file=str(generated), label_in=str(label)
    )
    assert from_label["tumor_source"] == "label"
    assert np.array_equal(np.asanyarray(decoded_mask(from_label, tmp_path).dataobj), mask), (
        "a label maps voxel for voxel"
    )


def test_label_on_a_user_ct_keeps_its_world_position(server, phantom, tmp_path):
    label = np.zeros(phantom.label.shape, np.uint8)
    i, j, k = phantom.lung_voxel
    label[i - 4 : i + 4, j - 4 : j + 4, k - 3 : k + 3] = 1
    path = tmp_path / "label.nii.gz"
    nib.save(nib.Nifti1Image(label, phantom.affine), path)
    _, _, info = infer(server, "synthesize_tumor", {"seed": 1}, label_in=str(path))
    mask = decoded_mask(info, tmp_path)
    centroid = world(np.argwhere(np.asanyarray(mask.dataobj)).mean(0), mask.affine)
    assert np.linalg.norm(centroid - world(np.argwhere(label).mean(0), phantom.affine)) < 8.0


def post(url: str, model: str, params: dict, image: str = "phantom", files: dict | None = None) -> requests.Response:
    """A raw multipart /infer request, as a browser or a script would send it."""
    uploads = {name: (Path(p).name, Path(p).read_bytes()) for name, p in (files or {}).items()}
    return requests.post(
        f"{url}/infer/{model}",
        params={"image": image},
        data={"params": json.dumps(params)},
        files=uploads or None,
        timeout=120,
    )


@pytest.fixture(scope="module")
def bad_uploads(phantom, tmp_path_factory) -> dict:
    """Files for refused requests: labels of the wrong shape and values, and an image that is not NIfTI."""
    folder = tmp_path_factory.mktemp("bad")
    nib.save(nib.Nifti1Image(np.ones((10, 10, 10), np.uint8), phantom.affine), folder / "small.nii.gz")
    nib.save(nib.Nifti1Image(phantom.label, phantom.affine), folder / "labelmap.nii.gz")
    (folder / "text.nii.gz").write_text("not an image")
    return {name: folder / f"{name}.nii.gz" for name in ("small", "labelmap", "text")}


CLICK = [[32, 32, 27]]
BAD_REQUESTS = {
    "unknown model": ("segmentation", {}, None, 404, "model"),
    "zero steps": ("synthesize", {"num_inference_steps": 0}, None, 400, "num_inference_steps"),
    "negative steps": ("synthesize", {"num_inference_steps": -3}, None, 400, "num_inference_steps"),
    "too many steps": (
        "synthesize_tumor",
        {"num_inference_steps": MAX_STEPS + 1, "foreground": CLICK},
        None,
        400,
        "num_inference_steps",
    ),
    "steps as text": ("synthesize", {"num_inference_steps": "ten"}, None, 400, "num_inference_steps"),
    "seed as text": ("synthesize", {"seed": "abc"}, None, 400, "seed"),
    "fractional seed": ("synthesize", {"seed": 1.5}, None, 400, "seed"),
    "boolean seed": ("synthesize", {"seed": True}, None, 400, "seed"),
    "negative seed": ("synthesize", {"seed": -1}, None, 400, "seed"),
    "unknown sampler": ("synthesize", {"sampler": "euler"}, None, 400, "sampler"),
    "ddpm beyond the step cap": ("synthesize", {"sampler": "ddpm"}, None, 400, "sampler"),
    "sampler of another training schedule": ("synthesize", {"sampler": "rflow"}, None, 400, "sampler"),
    "diameter of 1 km": (
        "synthesize_tumor",
        {"foreground": CLICK, "tumor_diameter_mm": 1e6},
        None,
        400,
        "tumor_diameter_mm",
    ),
    "diameter as text": (
        "synthesize_tumor",
        {"foreground": CLICK, "tumor_diameter_mm": "big"},
        None,
        400,
        "tumor_diameter_mm",
    ),
    "click of two numbers": ("synthesize_tumor", {"foreground": [[1, 2]]}, None, 400, "foreground"),
    "click outside the image": ("synthesize_tumor", {"foreground": [[1e9, 0, 0]]}, None, 400, "foreground"),
    "too many clicks": ("synthesize_tumor", {"foreground": CLICK * 9}, None, 400, "foreground"),
    "tumor leaving the volume": (
        "synthesize_tumor",
        {"foreground": [[0, 0, 0]], "tumor_diameter_mm": 100.0},
        None,
        400,
        "foreground",
    ),
    "neither click nor label": ("synthesize_tumor", {}, None, 400, "foreground"),
    "label of the wrong shape": ("synthesize_tumor", {}, "small", 400, "label"),
    "label that is not binary": ("synthesize_tumor", {}, "labelmap", 400, "label"),
    "label path in params": ("synthesize_tumor", {"label": "/etc/hostname"}, None, 400, "label"),
    "image path in params": ("synthesize_tumor", {"image": "/etc/hostname", "foreground": CLICK}, None, 404, "image"),
    "unknown image id": ("synthesize_tumor", {"image": "nobody", "foreground": CLICK}, None, 404, "image"),
    "image that is not NIfTI": ("synthesize_tumor", {"foreground": CLICK}, "text", 400, "image"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_requests_are_refused_naming_the_parameter_and_the_server_answers_on(server, bad_uploads, case):
    model, params, upload, status, name = BAD_REQUESTS[case]
    files = {("file" if upload == "text" else "label"): bad_uploads[upload]} if upload else None
    response = post(server, model, params, files=files)
    assert response.status_code == status, response.text
    assert response.json()["detail"].startswith(f"{name}:"), response.text
    assert requests.get(f"{server}/info/", timeout=30).status_code == 200


def test_serving_command_runs_the_app_and_lets_no_browser_origin_in(served):
    _, hu, _ = infer(served, "synthesize", {"seed": 4})
    assert hu.dtype == np.int16
    preflight = {"Access-Control-Request-Method": "POST"}
    for origin in ("http://evil.example", CONFIGURED_ORIGIN):
        answer = requests.options(f"{served}/infer/synthesize", headers={"Origin": origin, **preflight}, timeout=30)
        assert answer.status_code == 400 and "access-control-allow-origin" not in answer.headers, origin
    page = requests.get(f"{served}/info/", headers={"Origin": "http://evil.example"}, timeout=30)
    assert page.status_code == 200 and "access-control-allow-origin" not in page.headers


def test_default_start_server_echoes_any_origin(server):
    answer = requests.get(f"{server}/info/", headers={"Origin": "http://evil.example"}, timeout=30)
    assert answer.headers.get("access-control-allow-origin") in ("*", "http://evil.example"), (
        "why the README serves with monailabel_app.serve"
    )


def test_a_request_during_a_generation_waits_for_it(served):
    server, done = served, {}

    def generate():
        try:
            infer(server, "synthesize", {"seed": 1, "num_inference_steps": LONG_STEPS})
        except Exception as error:  # reported by the assertion below
            done["error"] = repr(error)
        done["infer"] = time.monotonic()

    worker = threading.Thread(target=generate)
    worker.start()
    time.sleep(0.3)
    sent = time.monotonic()
    assert requests.get(f"{server}/info/", timeout=120).status_code == 200
    answered = time.monotonic()
    worker.join()
    assert "error" not in done, done
    assert sent < done["infer"], "the generation ended before /info/ was sent: make it longer"
    assert answered >= done["infer"] - 0.05, (
        "/info/ is answered only once the generation is over (/infer blocks the server)"
    )


def test_results_carry_the_structures_as_named_segments(server, phantom, tmp_path):
    params = request_params(seed=3, num_inference_steps=STEPS, foreground=[phantom.lung_voxel], tumor_diameter_mm=40.0)
    result = synthesize(server, TUMOR_TASK, params, tmp_path / "tumor", image_file=phantom.path)
    ct, mask, structures = (nib.load(p) for p in (result.ct_path, result.mask_path, result.structures_path))
    ids = np.asanyarray(structures.dataobj)
    assert structures.shape == ct.shape and np.allclose(structures.affine, ct.affine)
    assert np.array_equal(ids == LABELS["gtv_1"], np.asanyarray(mask.dataobj) > 0), "GTV-1 is the requested tumor"
    names = result.info["structures_labels"]
    assert names["GTV-1"] == LABELS["gtv_1"] and set(names.values()) == set(np.unique(ids).tolist()) - {0}
    plain = synthesize(server, TASK, request_params(seed=3, num_inference_steps=STEPS), tmp_path / "plain")
    assert plain.structures_path.name == "synthesize_seed3_structures.nii.gz" and plain.mask_path is None
    assert nib.load(plain.structures_path).shape == nib.load(plain.ct_path).shape


def test_slicer_client_logic_against_the_server(server, phantom, tmp_path):
    params = request_params(seed=3, num_inference_steps=STEPS, foreground=[phantom.lung_voxel], tumor_diameter_mm=40.0)
    result = synthesize(server, TUMOR_TASK, params, tmp_path / "out", image_file=phantom.path)
    assert result.ct_path == tmp_path / "out" / "synthesize_tumor_seed3_ct.nii.gz"
    ct, mask = nib.load(result.ct_path), nib.load(result.mask_path)
    assert ct.get_data_dtype() == np.int16 and np.allclose(mask.affine, ct.affine)
    assert mask.get_data_dtype() == np.uint8 and np.asanyarray(mask.dataobj).any()
    assert "tumor_mask" not in result.info and result.info["placement"] == "lung_box"
