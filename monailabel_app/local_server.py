"""Start this app under a real MONAI Label server on 127.0.0.1 and stop it again (for the tests and the benchmark).

Three launch commands, all in the README:
- `python -m monailabel_app.serve`, the product's hardened server (serve.py), the way to run it;
- `monailabel start_server` (`python -m monailabel.main start_server --app monailabel_app ...`),
  MONAI Label's own, unhardened; it cannot take MONAI_LABEL_CORS_ORIGINS (0.8.5 crashes printing that setting);
- uvicorn on `monailabel.app:app` with MONAI Label's settings in the environment (unhardened too).
The server runs in its own process group and writes its output to a log file. `phantom_study`
writes a procedural thorax CT for it to serve (needs the bundle on sys.path).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

APP_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class PhantomStudy:
    """A phantom CT in a studies folder: its file, label map, affine and a voxel inside its lungs."""

    path: Path
    label: np.ndarray
    affine: np.ndarray
    lung_voxel: list[int]


def phantom_study(studies: Path, size: int = 64, seed: int = 3) -> PhantomStudy:
    """Write `studies/phantom.nii.gz`, a seeded procedural thorax CT of `size` voxels in-plane."""
    from scripts.data.labels import LABELS
    from scripts.phantoms.thorax import draw_anatomy, render_phantom

    rng = np.random.default_rng(seed)
    ct, label, affine = render_phantom(draw_anatomy(rng), size, rng)
    studies.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(ct, affine), studies / "phantom.nii.gz")
    lungs = np.argwhere(label == LABELS["lungs"])
    return PhantomStudy(studies / "phantom.nii.gz", label, affine, lungs[len(lungs) // 2].tolist())


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server_command(studies: Path, port: int, conf: Mapping[str, str]) -> tuple[list[str], dict[str, str]]:
    """`monailabel start_server` for this app on 127.0.0.1:`port`, and the environment it adds (none)."""
    command = [
        sys.executable,
        "-m",
        "monailabel.main",
        "start_server",
        "--app",
        str(APP_DIR),
        "--studies",
        str(studies),
    ]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    for key, value in conf.items():
        command += ["--conf", key, str(value)]
    return command, {}


def serve_command(
    studies: Path, port: int, conf: Mapping[str, str], options: Sequence[str]
) -> tuple[list[str], dict[str, str]]:
    """`python -m monailabel_app.serve` on 127.0.0.1:`port` with serve's `options`, and the environment it adds (none)."""
    command = [sys.executable, "-m", "monailabel_app.serve", "--studies", str(studies), "--port", str(port)]
    for key, value in conf.items():
        command += ["--conf", key, str(value)]
    return [*command, *options], {}


def uvicorn_command(
    studies: Path, port: int, conf: Mapping[str, str], cors_origins: Sequence[str]
) -> tuple[list[str], dict[str, str]]:
    """uvicorn serving MONAI Label for this app on 127.0.0.1:`port`, with the settings it reads from the environment."""
    environment = {
        "MONAI_LABEL_APP_DIR": str(APP_DIR),
        "MONAI_LABEL_STUDIES": str(studies),
        "MONAI_LABEL_APP_CONF": json.dumps(dict(conf)),
        "MONAI_LABEL_CORS_ORIGINS": json.dumps(list(cors_origins)),
    }
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "monailabel.app:app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ], environment


def wait_ready(url: str, process: subprocess.Popen, log: Path, timeout_s: float) -> None:
    """Poll `url`/info/ until it answers (any status: a server with a token answers 401), failing with the log's tail
    if the server dies or times out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(f"{url}/info/", timeout=5):
                return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"no answer from {url}/info/ within {timeout_s} s:\n{log.read_text()[-4000:]}")


def stop(process: subprocess.Popen) -> None:
    """Terminate the server's process group (it started it), killing it if it does not stop within 20 s."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@contextmanager
def running_server(
    studies: Path,
    log: Path,
    conf: Mapping[str, str] | None = None,
    cors_origins: Sequence[str] | None = None,
    timeout_s: float = 300.0,
    serve: Sequence[str] | None = None,
    environment: Mapping[str, str] | None = None,
) -> Iterator[str]:
    """A server for this app on a free port of 127.0.0.1, with `environment` added; yields its URL, always stops it.

    `monailabel_app.serve` with the options `serve` when given, else uvicorn when `cors_origins` is
    given, else `start_server`.
    """
    port = free_port()
    if serve is not None:
        command, settings = serve_command(studies, port, conf or {}, serve)
    elif cors_origins is None:
        command, settings = start_server_command(studies, port, conf or {})
    else:
        command, settings = uvicorn_command(studies, port, conf or {}, cors_origins)
    threads = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    with open(log, "w") as output:
        process = subprocess.Popen(
            command,
            cwd=APP_DIR.parent,  # the repository root, where `-m monailabel_app.serve` is found
            env={**os.environ, **threads, **settings, **(environment or {})},
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, process, log, timeout_s)
        yield url
    finally:
        stop(process)
