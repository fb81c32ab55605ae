"""Benchmark: request latency of the MONAI Label app's tasks, and how long another request waits during a generation.

Usage (from the repository root):
    .venv/bin/python bench/monailabel_latency.py [--model-dir DIR] [--steps 10 50] [--repeats 3] [--threads 1]
Without --model-dir the server uses the bundle's default weights (models/, else the demo weights).
Starts a real server (`monailabel start_server`, 127.0.0.1) on a phantom study and prints, per task and
step count, the wall time of a request through MONAILabelClient (median and best of --repeats) and the
sampling time the server reports; then the latency of GET /info/ when idle and when sent 0.3 s into a
generation of the largest step count (MONAI Label's /infer holds the whole server while it runs).
"""

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "bundle"), str(ROOT / "monailabel_app")]

from local_server import phantom_study, running_server  # noqa: E402
from monailabel.client import MONAILabelClient  # noqa: E402

from scripts.networks.loading import AUTOENCODER_FILE, CONTROLNET_FILE, DIFFUSION_FILE, default_model_dir  # noqa: E402


def timed_infer(url: str, model: str, params: dict) -> tuple[float, dict]:
    """Wall seconds of one /infer through MONAI Label's client, and the server's JSON."""
    with tempfile.TemporaryDirectory() as downloads:
        start = time.perf_counter()
        _, info = MONAILabelClient(url, tmpdir=downloads).infer(model, "phantom", params)
        return time.perf_counter() - start, info


def info_seconds(url: str) -> float:
    """Wall seconds of GET /info/."""
    start = time.perf_counter()
    requests.get(f"{url}/info/", timeout=3600).raise_for_status()
    return time.perf_counter() - start


def blocked_info(url: str, params: dict) -> tuple[float, float]:
    """(generation seconds, /info/ seconds) for a /info/ sent 0.3 s after a generation started."""
    result = {}

    def generate() -> None:
        result["generation"] = timed_infer(url, "synthesize", params)[0]

    worker = threading.Thread(target=generate)
    worker.start()
    time.sleep(0.3)
    waited = info_seconds(url)
    worker.join()
    return result["generation"], waited


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", default=None, help="checkpoint folder (default: the bundle's default weights)")
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 50], help="num_inference_steps to time (DDIM)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", default="1", help="OMP_NUM_THREADS of the server")
    args = parser.parse_args()
    files = (AUTOENCODER_FILE, DIFFUSION_FILE, CONTROLNET_FILE)
    weights = Path(args.model_dir).resolve() if args.model_dir else default_model_dir(ROOT / "bundle", files)
    conf = {"model_dir": str(weights), "max_inference_steps": str(max(args.steps))}
    with tempfile.TemporaryDirectory() as tmp:
        study = phantom_study(Path(tmp) / "studies", size=128, seed=3)
        os.environ["OMP_NUM_THREADS"] = args.threads  # the server inherits it
        started = time.perf_counter()
        with running_server(study.path.parent, Path(tmp) / "server.log", conf) as url:
            print(
                f"weights: {weights}\nserver threads: {args.threads}\nserver ready after {time.perf_counter() - started:.1f} s"
            )
            tasks = {
                "synthesize": {},
                "synthesize_tumor": {"foreground": [study.lung_voxel], "tumor_diameter_mm": 30.0},
            }
            print(f"{'task':<18}{'steps':>6}{'median s':>10}{'best s':>8}{'sampling s':>12}")
            for model, extra in tasks.items():
                for steps in args.steps:
                    runs = [
                        timed_infer(url, model, {"seed": n, "num_inference_steps": steps, **extra})
                        for n in range(args.repeats)
                    ]
                    seconds = [s for s, _ in runs]
                    sampling = statistics.median(info["sampling_seconds"] for _, info in runs)
                    print(
                        f"{model:<18}{steps:>6}{statistics.median(seconds):>10.2f}{min(seconds):>8.2f}{sampling:>12.2f}"
                    )
            idle = info_seconds(url)
            generation, waited = blocked_info(url, {"seed": 0, "num_inference_steps": max(args.steps)})
            print(
                f"GET /info/ idle: {idle:.3f} s; sent 0.3 s into a {generation:.2f} s generation: answered after {waited:.2f} s"
            )


if __name__ == "__main__":
    main()
