"""Seconds per patient for `ingest`, next to the floor: reading the same files with `pydicom.dcmread` alone.

Run from the repository root:

    .venv/bin/python bench/ingest_speed.py [--src DICOM_ROOT] [--n 3] [--size 256] [--workers 1] [--repeat 2]

Without `--src` it first writes phantom DICOM trees (CT, RTSTRUCT, SEG; scripts.phantoms.dicom_tree) to a temporary
folder. Both timings read files already in the page cache (the files are read once before timing), and each is
the best of `--repeat` runs. The target is ingestion within 2x of the floor at the same number of processes.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pydicom

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bundle"))

from scripts.dicom.index import list_files  # noqa: E402
from scripts.dicom.ingest import ingest  # noqa: E402
from scripts.phantoms.dicom_tree import write_phantom_dicom  # noqa: E402


def best_time(run: Callable[[], object], repeat: int) -> float:
    """The shortest wall-clock time of `repeat` calls of `run`, in seconds."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def read_all(paths: list[Path]) -> None:
    """The floor: every file read whole by pydicom.dcmread (pixels loaded, not decoded)."""
    for path in paths:
        pydicom.dcmread(path, force=True)


def main() -> None:
    """Time the floor and ingestion on the same tree and print seconds per patient for both."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", help="a DICOM tree to time; default: phantoms written to a temporary folder")
    parser.add_argument("--n", type=int, default=3, help="phantom patients to write (without --src)")
    parser.add_argument("--size", type=int, default=256, help="phantom in-plane voxels (without --src)")
    parser.add_argument("--workers", type=int, default=1, help="ingest processes (the floor always uses one)")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each timing; the best is kept")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(args.src) if args.src else write_phantom_dicom(str(Path(tmp) / "dicom"), n=args.n, size=args.size)
        paths = list_files(src)
        read_all(paths)
        floor = best_time(lambda: read_all(paths), args.repeat)
        report_path = Path(tmp) / "out" / "report.json"
        ingest_time = best_time(
            lambda: ingest(str(src), str(report_path.parent), workers=args.workers, overwrite=True), args.repeat
        )
        summary = json.loads(report_path.read_text())["summary"]
    patients = summary["converted"] + summary["excluded"]
    print(
        f"tree: {src if args.src else f'{args.n} phantoms at size {args.size}'}; {len(paths)} files, {patients} patients {summary}"
    )
    print(f"floor (pydicom.dcmread, 1 process): {floor / patients:.3f} s per patient")
    print(f"ingest ({args.workers} worker(s)):        {ingest_time / patients:.3f} s per patient")
    print(f"ratio: {ingest_time / floor:.2f}x the floor (target: within 2x)")


if __name__ == "__main__":
    main()
