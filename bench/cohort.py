"""Benchmark: cohort throughput (patients per minute) by one process and by torchrun ranks, and whether both write the
same cohort.

Usage (from the repository root):
    .venv/bin/python bench/cohort.py [--spec bundle/configs/cohort_demo.yaml] [--model-dir bundle/models/demo]
        [--ranks 2] [--out-dir DIR] [--out cohort.json]
Runs `python -m scripts cohort` on the spec in one process, then under `torchrun --nproc_per_node=RANKS` (on a GPU
machine one GPU per rank), into fresh folders. Every process gets `--threads` CPU threads (default cores / RANKS):
float sums depend on the thread count, so only equal counts give bit-identical voxels (a process with twice the threads
differs by at most 1 HU in a few voxels in 10,000). Prints wall time, patients per minute and the quality verdicts of
each, and whether the two manifests and every patient's CT voxels are identical.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bundle"))

from scripts.evaluation.report import markdown_table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "bundle"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, default=BUNDLE / "configs" / "cohort_demo.yaml")
    parser.add_argument("--model-dir", type=Path, default=BUNDLE / "models" / "demo")
    parser.add_argument("--ranks", type=int, default=2, help="torchrun processes")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads per process (default cores / ranks)")
    parser.add_argument("--out-dir", type=Path, default=None, help="where the two cohorts go (default: a temp folder)")
    parser.add_argument("--out", type=Path, default=None, help="JSON with every figure")
    return parser.parse_args(argv)


def run(launcher: list[str], spec: Path, model_dir: Path, out: Path, threads: int) -> float:
    """Seconds the cohort command took under `launcher`; a failed run stops the benchmark with its log."""
    command = [*launcher, "-m", "scripts", "cohort", "--spec", str(spec.resolve()), "--out", str(out)]
    command += ["--model_dir", str(model_dir.resolve())]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=BUNDLE, env={**os.environ, "OMP_NUM_THREADS": str(threads)}, capture_output=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{done.stderr.decode()[-3000:]}")
    return time.perf_counter() - started


def manifest(folder: Path) -> list[dict]:
    """The rows of a cohort's manifest.csv."""
    with open(folder / "manifest.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def same_cohort(first: Path, second: Path) -> dict:
    """Whether two cohort folders hold the same manifest and the same CT voxels, patient by patient."""
    rows = manifest(first)
    voxels_equal = all(
        np.array_equal(*(np.asanyarray(nib.load(f / r["patient_id"] / "ct.nii.gz").dataobj) for f in (first, second)))
        for r in rows
    )
    return {"manifests_identical": rows == manifest(second), "ct_voxels_identical": voxels_equal}


def main(argv: list[str] | None = None) -> dict:
    """Time both launches, compare their cohorts; print the table and return (and optionally write) the figures."""
    args = parse_args(argv)
    cores = os.cpu_count() or 1
    threads = args.threads or max(1, cores // args.ranks)
    torchrun = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={args.ranks}", "--master_port=29533"]
    launchers = {"one process": [sys.executable], f"torchrun x{args.ranks}": torchrun}
    with tempfile.TemporaryDirectory() as scratch:
        root = args.out_dir or Path(scratch)
        rows, folders = [], []
        for name, launcher in launchers.items():
            folder = root / name.replace(" ", "_")
            seconds = run(launcher, args.spec, args.model_dir, folder, threads)
            patients = manifest(folder)
            verdicts = [p["quality"] for p in patients]
            rows.append(
                {
                    "launch": name,
                    "patients": len(patients),
                    "drawn CTs": sum(int(p["attempts"]) for p in patients),
                    "passed": sum(v == "pass" for v in verdicts),
                    "minutes": round(seconds / 60, 2),
                    "patients/min": round(len(patients) / seconds * 60, 3),
                }
            )
            folders.append(folder)
        figures = {"spec": str(args.spec), "model_dir": str(args.model_dir), "threads": threads, "rows": rows}
        figures.update(same_cohort(*folders))
    print(f"Cohort {args.spec.name} with {args.model_dir} on {cores} CPU cores, {threads} threads per process:")
    print(markdown_table(rows))
    print(
        f"manifests identical: {figures['manifests_identical']}, CT voxels identical: {figures['ct_voxels_identical']}"
    )
    if args.out:
        args.out.write_text(json.dumps(figures, indent=2) + "\n")
    return figures


if __name__ == "__main__":
    main()
