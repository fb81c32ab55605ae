"""Seconds per patient for `ingest`, next to the floor (the same files read with `pydicom.dcmread` alone) and to
the standard converter, `dcm2niix -z y`, converting each patient's CT series alone.

Run from the repository root:

    .venv/bin/python bench/ingest_speed.py [--src DICOM_ROOT] [--n 2] [--size "[512,512,128]"] [--workers 1] [--repeat 3]

Without `--src` it first writes phantom DICOM trees (CT, RTSTRUCT, SEG; scripts.phantoms.dicom_tree) to a temporary
folder. Every timing reads files already in the page cache (the files are read once before timing), and each is
the best of `--repeat` runs. Target: ingestion (CT plus structures, one worker) within 1.2x of dcm2niix on the CT
alone. dcm2niix comes from the Debian package `dcm2niix` and gzips with `pigz` (on every core) when that is on the
PATH, else with its own zlib on one core: the line says which. Without dcm2niix that line says so and the rest
still runs. The floor only reads the files (no pixel decoding, rasterising or gzip): a bound, not a target.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pydicom

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bundle"))

from scripts.dicom.index import group, list_files, read_headers  # noqa: E402
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


def ct_folders(src: Path, paths: list[Path]) -> list[Path]:
    """The folders holding each patient's CT series, found by the tags as ingest finds them."""
    index = group(src, paths, read_headers(paths))
    return sorted({Path(f.path).parent for p in index.patients.values() for s in p.of_modality("CT") for f in s.files})


def convert_with_dcm2niix(folders: list[Path], out: Path) -> None:
    """`dcm2niix -z y` on each CT folder into `out` (gzipped NIfTI, as ingest writes), failing loudly on an error."""
    out.mkdir(exist_ok=True)
    for number, folder in enumerate(folders):
        subprocess.run(
            ["dcm2niix", "-z", "y", "-o", str(out), "-f", f"ct{number}", str(folder)], check=True, capture_output=True
        )


def main() -> None:
    """Time the floor and ingestion on the same tree and print seconds per patient for both."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", help="a DICOM tree to time; default: phantoms written to a temporary folder")
    parser.add_argument("--n", type=int, default=2, help="phantom patients to write (without --src)")
    parser.add_argument(
        "--size", type=json.loads, default=[512, 512, 128], help="phantom voxels: one size or [x, y, z] (without --src)"
    )
    parser.add_argument("--workers", type=int, default=1, help="ingest processes (the floor and dcm2niix use one)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each timing; the best is kept")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(args.src) if args.src else write_phantom_dicom(str(Path(tmp) / "dicom"), n=args.n, size=args.size)
        paths = list_files(src)
        read_all(paths)
        floor = best_time(lambda: read_all(paths), args.repeat)
        converter = None
        if shutil.which("dcm2niix"):
            folders, converted = ct_folders(src, paths), Path(tmp) / "dcm2niix"
            converter = best_time(lambda: convert_with_dcm2niix(folders, converted), args.repeat)
        report_path = Path(tmp) / "out" / "report.json"
        ingest_time = best_time(
            lambda: ingest(str(src), str(report_path.parent), workers=args.workers, overwrite=True), args.repeat
        )
        summary = json.loads(report_path.read_text())["summary"]
    patients = summary["converted"] + summary["excluded"]
    print(
        f"tree: {src if args.src else f'{args.n} phantoms of size {args.size}'}; {len(paths)} files, {patients} patients {summary}"
    )
    print(f"floor (pydicom.dcmread, 1 process): {floor / patients:.3f} s per patient")
    if converter is None:
        print("dcm2niix: not installed (Debian package dcm2niix); no comparison")
    else:
        gzip = "pigz, every core" if shutil.which("pigz") else "its own zlib, one core"
        print(f"dcm2niix -z y on the CT alone:      {converter / patients:.3f} s per patient (gzip: {gzip})")
    print(f"ingest ({args.workers} worker(s)):        {ingest_time / patients:.3f} s per patient")
    print(f"ratio: {ingest_time / floor:.2f}x the floor")
    if converter is not None:
        print(f"ratio: {ingest_time / converter:.2f}x dcm2niix (target: within 1.2x with one worker)")


if __name__ == "__main__":
    main()
