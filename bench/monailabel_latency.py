"""Benchmark: request latency of the MONAI Label app's tasks, and the latency of GET /info/ while generations run.

Usage (from the repository root):
    .venv/bin/python bench/monailabel_latency.py [--model-dir DIR] [--steps 10 50] [--repeats 3] [--threads 1]
        [--server serve|start_server] [--load 6] [--queue-size 4]
Without --model-dir the server uses the bundle's default weights (models/, else the demo weights).
Starts a real server on 127.0.0.1 (`python -m monailabel_app.serve`, or MONAI Label's bare
`start_server` for comparison) on a phantom study and prints, per task and step count, the wall
time of a request through MONAILabelClient (median and best of --repeats) and the sampling time
the server reports; then GET /info/ idle, and under load: --load generation requests of the largest
step count sent at once while /info/ is polled every 0.1 s (latency median, 95th percentile by nearest rank, max;
the queue length /info/ showed; the generations' status codes, 429 beyond the queue).
"""

import argparse
import collections
import json
import math
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


def info_under_load(url: str, params: dict, load: int) -> tuple[list[float], list[int], collections.Counter]:
    """/info/ latencies and queue lengths while `load` generation requests run at once, and their status codes."""
    statuses: collections.Counter = collections.Counter()

    def generate() -> None:
        answer = requests.post(
            f"{url}/infer/synthesize", params={"image": "phantom"}, data={"params": json.dumps(params)}, timeout=3600
        )
        statuses[answer.status_code] += 1

    workers = [threading.Thread(target=generate) for _ in range(load)]
    for worker in workers:
        worker.start()
    latencies, lengths = [], []
    while any(worker.is_alive() for worker in workers):
        start = time.perf_counter()
        answer = requests.get(f"{url}/info/", timeout=3600)
        latencies.append(time.perf_counter() - start)
        lengths.append(answer.json().get("queue", {}).get("length", -1))
        time.sleep(0.1)
    return latencies, lengths, statuses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", default=None, help="checkpoint folder (default: the bundle's default weights)")
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 50], help="num_inference_steps to time (DDIM)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", default="1", help="OMP_NUM_THREADS of the server")
    parser.add_argument("--server", choices=["serve", "start_server"], default="serve")
    parser.add_argument("--load", type=int, default=6, help="generation requests sent at once for the /info/ test")
    parser.add_argument("--queue-size", default="4", help="serve's --queue-size")
    args = parser.parse_args()
    files = (AUTOENCODER_FILE, DIFFUSION_FILE, CONTROLNET_FILE)
    weights = Path(args.model_dir).resolve() if args.model_dir else default_model_dir(ROOT / "bundle", files)
    conf = {"model_dir": str(weights), "max_inference_steps": str(max(args.steps))}
    with tempfile.TemporaryDirectory() as tmp:
        study = phantom_study(Path(tmp) / "studies", size=128, seed=3)
        os.environ["OMP_NUM_THREADS"] = args.threads  # the server inherits it
        started = time.perf_counter()
        serve = ["--queue-size", args.queue_size] if args.server == "serve" else None
        with running_server(study.path.parent, Path(tmp) / "server.log", conf, serve=serve) as url:
            print(
                f"server: {args.server}\nweights: {weights}\nserver threads: {args.threads}\n"
                f"server ready after {time.perf_counter() - started:.1f} s"
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
            latencies, lengths, statuses = info_under_load(
                url, {"seed": 0, "num_inference_steps": max(args.steps)}, args.load
            )
            ranked = sorted(latencies)
            print(
                f"GET /info/ idle: {idle:.3f} s; under load ({args.load} generations of {max(args.steps)} steps sent at once): "
                f"{len(ranked)} polls, median {statistics.median(ranked):.3f} s, "
                f"p95 {ranked[math.ceil(0.95 * len(ranked)) - 1]:.3f} s, max {ranked[-1]:.3f} s; "
                f"queue length seen up to {max(lengths)}; generation answers {dict(sorted(statuses.items()))}"
            )


if __name__ == "__main__":
    main()
