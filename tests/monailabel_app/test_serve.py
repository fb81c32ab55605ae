"""`python -m monailabel_app.serve` (the demo weights) under a real server on 127.0.0.1: the findings of issue 17.

Each case was answered by MONAI Label's bare `start_server` with a write outside the studies folder,
an echoed CORS origin, a 500, a left-over upload or a blocked `/info/`. Two servers: `open_server`
(loopback, no token, datastore writes off, two queue places) and `locked_server` (a token, one
allowed origin, datastore writes on).
"""

import gzip
import io
import json
import re
import secrets
import socket
import subprocess
import sys
import tarfile
import threading
import time
import uuid
from pathlib import Path

import nibabel as nib
import numpy as np
import psutil
import pytest
import requests
from local_server import APP_DIR, PhantomStudy, phantom_study, running_server
from monailabel.client import MONAILabelClient
from synthesis_client import TUMOR_TASK, request_params, synthesize

from helpers import BUNDLE

pytestmark = pytest.mark.skipif(
    not (BUNDLE / "models" / "demo" / "controlnet.pt").is_file(),
    reason="the demo weights are not trained yet: bundle/models/demo/controlnet.pt is missing",
)

STEPS, LONG_STEPS = 2, 15
CONF = {"max_inference_steps": "20"}
ALLOWED_ORIGIN = "https://viewer.example.org"
EVIL_ORIGIN = "https://evil.example"


class Served:
    """A running serve process: its URL, studies, temporary folder, home folder and log."""

    def __init__(self, url: str, study: PhantomStudy, tmp: Path, home: Path, log: Path) -> None:
        self.url, self.study, self.tmp, self.home, self.log = url, study, tmp, home, log


def serving(folder: Path, options: list[str]):
    """serve on a 96-voxel phantom study, with its own TMPDIR and HOME (where MONAI Label keeps sessions)."""
    study = phantom_study(folder / "studies", size=96, seed=8)
    tmp, home = folder / "tmp", folder / "home"
    tmp.mkdir()
    home.mkdir()
    log = folder / "server.log"
    environment = {"TMPDIR": str(tmp), "HOME": str(home)}
    with running_server(study.path.parent, log, CONF, serve=options, environment=environment) as url:
        yield Served(url, study, tmp, home, log)


@pytest.fixture(scope="module")
def open_server(tmp_path_factory) -> Served:
    """serve with its defaults on loopback: no token, no datastore writes; two queue places."""
    yield from serving(tmp_path_factory.mktemp("open"), ["--queue-size", "2"])


@pytest.fixture(scope="module")
def token(tmp_path_factory) -> tuple[str, Path]:
    """A bearer token and the file holding it."""
    value = secrets.token_urlsafe(32)
    path = tmp_path_factory.mktemp("token") / "token"
    path.write_text(value + "\n")
    return value, path


@pytest.fixture(scope="module")
def locked_server(tmp_path_factory, token) -> Served:
    """serve with a token, one allowed browser origin and datastore writes on."""
    options = ["--token-file", str(token[1]), "--allow-origin", ALLOWED_ORIGIN, "--allow-datastore-writes"]
    yield from serving(tmp_path_factory.mktemp("locked"), options)


def bearer(value: str) -> dict:
    """The Authorization header for `value`."""
    return {"Authorization": f"Bearer {value}"}


def nifti_bytes(shape=(40, 40, 40), spacing=(7.0, 7.0, 5.5)) -> bytes:
    """A gzipped int16 NIfTI of zeros."""
    image = nib.Nifti1Image(np.zeros(shape, np.int16), np.diag([*spacing, 1.0]))
    return gzip.compress(image.to_bytes())


def huge_header() -> bytes:
    """A tiny .nii.gz whose header declares 512^3 voxels (twice the limit) over a few bytes of data."""
    image = nib.Nifti1Image(np.zeros((2, 2, 2), np.int16), np.eye(4))
    image.header.set_data_shape((512, 512, 512))
    return gzip.compress(image.header.binaryblock + b"\0" * 1004)


def infer(url: str, model: str, params, image: str = "phantom", files=None, headers=None, **query) -> requests.Response:
    """A raw multipart /infer request; `params` as text when a str, else as JSON."""
    text = params if isinstance(params, str) else json.dumps(params)
    return requests.post(
        f"{url}/infer/{model}",
        params={"image": image, **query},
        data={"params": text},
        files=files,
        headers=headers,
        timeout=120,
    )


def put(
    url: str, path: str, query: dict, field: str, data: bytes, headers=None, filename: str = "upload.nii.gz"
) -> requests.Response:
    """A datastore PUT uploading `data` as the form's `field`."""
    return requests.put(f"{url}{path}", params=query, files={field: (filename, data)}, headers=headers, timeout=60)


def escaped(studies: Path, relative: str) -> Path:
    """Where MONAI Label's datastore would have written `relative` (with its `../`)."""
    return (studies / relative).resolve()


def spawned() -> list[str]:
    """Command lines of the processes under this test run other than the serve processes (there should be none)."""
    children = psutil.Process().children(recursive=True)
    return [" ".join(c.cmdline()) for c in children if "monailabel_app.serve" not in " ".join(c.cmdline())]


NOT_OFFERED = [
    ("GET", "/logs/?text=true"),
    ("POST", "/train/synthesize"),
    ("POST", "/batch/infer/synthesize"),
    ("DELETE", "/datastore?id=../x"),
    ("GET", "/ohif/%2e%2e"),
    ("GET", "/proxy/dicom/x"),
    ("PUT", "/model/synthesize"),
    ("POST", "/activelearning/no_such_strategy"),
    ("POST", "/scoring/no_such_method"),
    ("GET", "/docs"),
    ("GET", "/datastore/?output=all"),
]


def test_only_info_and_infer_are_offered_and_no_process_is_spawned(open_server):
    for method, path in NOT_OFFERED:
        answer = requests.request(method, f"{open_server.url}{path}", timeout=30)
        assert answer.status_code == 404, (method, path, answer.text)
        assert answer.json()["detail"].startswith(f"{method} '{path.split('?')[0].replace('%2e', '.')}'")
    assert spawned() == []


def test_traversal_writes_are_refused_and_nothing_lands_outside(open_server):
    studies, name = open_server.study.path.parent, f"escaped_{uuid.uuid4().hex}"
    image = put(open_server.url, "/datastore/image", {"image": f"../../{name}"}, "file", nifti_bytes())
    label = put(
        open_server.url, "/datastore/label", {"image": "phantom", "tag": f"../../../{name}"}, "label", nifti_bytes()
    )
    assert (image.status_code, label.status_code) == (403, 403)
    assert "--allow-datastore-writes" in image.json()["detail"]
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        member = tarfile.TarInfo(f"../{name}")
        member.size = 4
        tar.addfile(member, io.BytesIO(b"evil"))
    session = requests.put(
        f"{open_server.url}/session/",
        params={"uncompress": "true"},
        files={"files": ("s.tar", archive.getvalue())},
        timeout=30,
    )
    assert session.status_code == 404, session.text
    assert not escaped(studies, f"../../{name}.nii.gz").exists()
    assert not escaped(studies, f"labels/../../../{name}").exists()
    assert not any(open_server.home.rglob(f"{name}*")), "no session member lands in MONAI Label's session folder"
    assert sorted(p.name for p in studies.glob("*.nii.gz")) == ["phantom.nii.gz"]


def test_datastore_writes_when_allowed_take_plain_names_only(locked_server, token):
    url, studies, headers = locked_server.url, locked_server.study.path.parent, bearer(token[0])
    name = f"escaped_{uuid.uuid4().hex}"
    image = put(url, "/datastore/image", {"image": f"../../{name}"}, "file", nifti_bytes(), headers)
    label = put(
        url, "/datastore/label", {"image": "phantom", "tag": f"../../../{name}"}, "label", nifti_bytes(), headers
    )
    assert image.status_code == 400 and image.json()["detail"].startswith("image:"), image.text
    assert label.status_code == 400 and label.json()["detail"].startswith("tag:"), label.text
    assert not escaped(studies, f"../../{name}.nii.gz").exists()
    assert not escaped(studies, f"labels/../../../{name}").exists()
    script = put(url, "/datastore/image", {"image": "script"}, "file", b"print(1)", headers, filename="x.py")
    whole = nifti_bytes()
    truncated = put(url, "/datastore/image", {"image": "cut"}, "file", whole[: len(whole) // 2], headers)
    assert script.status_code == 400 and script.json()["detail"].startswith("file:"), script.text
    assert truncated.status_code == 400 and truncated.json()["detail"].startswith("file:"), truncated.text
    added = put(url, "/datastore/image", {"image": "second_ct"}, "file", nifti_bytes(), headers)
    assert added.status_code == 200 and added.json() == {"image": "second_ct"}, added.text
    saved = put(url, "/datastore/label", {"image": "second_ct"}, "label", nifti_bytes(), headers)
    assert saved.status_code == 200 and (studies / "labels" / "final" / "second_ct.nii.gz").is_file(), saved.text
    assert sorted(p.name for p in studies.glob("*.nii*")) == ["phantom.nii.gz", "second_ct.nii.gz"]
    assert sorted(locked_server.tmp.glob("tmp*.nii*")) == [], "the uploads are deleted"


def test_the_token_is_required_and_never_logged(locked_server, token, tmp_path):
    url = locked_server.url
    for headers in ({}, bearer("wrong-" + token[0]), {"Authorization": token[0]}):
        answer = requests.get(f"{url}/info/", headers=headers, timeout=30)
        assert answer.status_code == 401 and answer.headers["www-authenticate"] == "Bearer", headers
        assert answer.json()["detail"].startswith("Authorization:")
    assert infer(url, "synthesize", {"num_inference_steps": STEPS}).status_code == 401
    client = MONAILabelClient(url, tmpdir=str(tmp_path))
    client.update_auth({"token_type": "Bearer", "access_token": token[0]})
    assert client.info()["queue"] == {"length": 0, "capacity": 4}
    params = request_params(seed=3, num_inference_steps=STEPS, foreground=[locked_server.study.lung_voxel])
    result = synthesize(url, TUMOR_TASK, params, tmp_path / "out", image_file=locked_server.study.path, token=token[0])
    assert nib.load(result.ct_path).get_data_dtype() == np.int16 and result.mask_path.is_file()
    assert token[0] not in locked_server.log.read_text()


def test_off_loopback_the_server_will_not_start_without_a_token(tmp_path):
    command = [sys.executable, "-m", "monailabel_app.serve", "--studies", str(tmp_path), "--host", "0.0.0.0"]
    ended = subprocess.run(command, cwd=APP_DIR.parent, capture_output=True, text=True, timeout=120)
    assert ended.returncode == 2 and "--token-file is required" in ended.stderr, ended.stderr


def test_cors_admits_no_origin_unless_named(open_server, locked_server, token):
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
    for served in (open_server, locked_server):
        answer = requests.options(
            f"{served.url}/infer/synthesize", headers={"Origin": EVIL_ORIGIN, **preflight}, timeout=30
        )
        assert answer.status_code == 400 and "access-control-allow-origin" not in answer.headers
        page = requests.get(f"{served.url}/info/", headers={"Origin": EVIL_ORIGIN, **bearer(token[0])}, timeout=30)
        assert page.status_code == 200 and "access-control-allow-origin" not in page.headers
    allowed = requests.options(
        f"{locked_server.url}/infer/synthesize", headers={"Origin": ALLOWED_ORIGIN, **preflight}, timeout=30
    )
    assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    assert "access-control-allow-credentials" not in allowed.headers


CLICK = {"foreground": [[48, 48, 40]]}
BAD_INFERS = {
    "params not JSON": ("synthesize", "{oops", {}, None, 400, "params"),
    "params a list": ("synthesize", "[1, 2]", {}, None, 400, "params"),
    "params null": ("synthesize", "null", {}, None, 400, "params"),
    "image path in params": ("synthesize_tumor", {"image": "/etc/hostname", **CLICK}, {}, None, 400, "params"),
    "image path in the query": ("synthesize_tumor", CLICK, {"image": "/etc/hostname"}, None, 404, "image"),
    "no image and no file": ("synthesize_tumor", CLICK, {"image": ""}, None, 404, "image"),
    "dicom_seg output": ("synthesize", {}, {"output": "dicom_seg"}, None, 400, "output"),
    "a session": ("synthesize", {}, {"session_id": "abc"}, None, 400, "session_id"),
    "unknown model": ("segmentation", {}, {}, None, 404, "model"),
    "truncated upload": ("synthesize_tumor", CLICK, {"image": ""}, "truncated", 400, "file"),
    "undecodable upload": ("synthesize_tumor", CLICK, {"image": ""}, "text", 400, "file"),
    "upload over the voxel limit": ("synthesize_tumor", CLICK, {"image": ""}, "huge", 413, "file"),
    "label named .bin": ("synthesize_tumor", {}, {}, "bin", 400, "label"),
}


def bad_upload(kind: str) -> dict:
    """The form's files for a refused request."""
    whole = nifti_bytes()
    files = {
        "truncated": ("file", "ct.nii.gz", whole[: len(whole) // 2]),
        "text": ("file", "ct.nii.gz", b"not an image"),
        "huge": ("file", "ct.nii.gz", huge_header()),
        "bin": ("label", "scribbles.bin", b"\1" * 64),
    }
    field, name, data = files[kind]
    return {field: (name, data)}


@pytest.mark.parametrize("case", list(BAD_INFERS))
def test_bad_infer_requests_get_a_4xx_naming_what_was_wrong(open_server, case):
    model, params, query, upload, status, name = BAD_INFERS[case]
    started = time.monotonic()
    answer = infer(open_server.url, model, params, files=bad_upload(upload) if upload else None, **query)
    assert answer.status_code == status, answer.text
    assert answer.json()["detail"].startswith(f"{name}:"), answer.text
    assert time.monotonic() - started < 0.5, "refused before generating"


def raw_answer(connection: socket.socket) -> tuple[bytes, bytes]:
    """An HTTP answer's head and whole body, read until its Content-Length arrives (it may come in several packets)."""
    data = b""
    while True:
        head, separator, body = data.partition(b"\r\n\r\n")
        length = re.search(rb"content-length: *(\d+)", head, re.IGNORECASE) if separator else None
        if length and len(body) >= int(length[1]):
            return head, body
        chunk = connection.recv(4096)
        assert chunk, f"the connection closed before the whole answer came: {data!r}"
        data += chunk


def test_a_body_over_the_limit_is_refused_before_it_is_read(open_server):
    with socket.create_connection(("127.0.0.1", int(open_server.url.rsplit(":", 1)[1])), timeout=30) as connection:
        connection.sendall(b"POST /infer/synthesize HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000000\r\n\r\n")
        head, body = raw_answer(connection)
    assert head.startswith(b"HTTP/1.1 413") and json.loads(body)["detail"].startswith("Content-Length:")


def test_no_upload_or_result_is_left_in_the_temporary_folder(open_server, tmp_path):
    before = sorted(open_server.tmp.rglob("*"))
    for case in ("truncated", "huge", "bin"):
        assert infer(open_server.url, "synthesize_tumor", CLICK, image="", files=bad_upload(case)).status_code >= 400
    upload = {"file": ("ct.nii.gz", open_server.study.path.read_bytes())}
    assert infer(open_server.url, "synthesize_tumor", {**CLICK, "num_inference_steps": STEPS}, files=upload).ok
    path, info = MONAILabelClient(open_server.url, tmpdir=str(tmp_path)).infer(
        "synthesize_tumor", "", {**CLICK, "num_inference_steps": STEPS}, file=str(open_server.study.path)
    )
    assert nib.load(path).get_data_dtype() == np.int16 and info["tumor_mask"]["voxels"] > 0
    assert sorted(open_server.tmp.rglob("*")) == before


def test_good_requests_still_return_int16_hu_cts(open_server, tmp_path):
    client = MONAILabelClient(open_server.url, tmpdir=str(tmp_path))
    for model, extra in (("synthesize", {}), ("synthesize_tumor", CLICK)):
        path, info = client.infer(model, "phantom", {"seed": 7, "num_inference_steps": STEPS, **extra})
        hu = np.asanyarray(nib.load(path).dataobj)
        assert hu.dtype == np.int16 and hu.shape == (128, 128, 128) and info["unit"] == "HU", model
        assert -1000 <= hu.min() < -900 and hu.max() <= 1000, model


def test_info_answers_while_generations_queue_first_in_first_out(open_server):
    answers, finished = {}, {}

    def generate(n: int) -> None:
        answers[n] = infer(open_server.url, "synthesize", {"seed": n, "num_inference_steps": LONG_STEPS})
        finished[n] = time.monotonic()

    workers = [threading.Thread(target=generate, args=(n,)) for n in range(3)]
    for worker in workers:
        worker.start()
        time.sleep(0.15)
    latencies, lengths = [], []
    while any(worker.is_alive() for worker in workers):
        sent = time.monotonic()
        lengths.append(requests.get(f"{open_server.url}/info/", timeout=30).json()["queue"]["length"])
        latencies.append(time.monotonic() - sent)
        time.sleep(0.1)
    assert [answers[n].status_code for n in range(3)] == [200, 200, 429], [answers[n].text for n in range(3)]
    assert answers[2].json()["detail"].startswith("queue:") and int(answers[2].headers["retry-after"]) >= 1
    assert finished[0] < finished[1], "generations run in arrival order"
    assert max(lengths) == 2 and len(latencies) >= 5
    assert max(latencies) < 0.5, f"/info/ took up to {max(latencies):.2f} s during generations"
