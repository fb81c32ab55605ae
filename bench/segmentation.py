"""Benchmark: the structure segmenter's Dice per structure on held-out phantoms, and the plausibility of its label
maps on synthetic CTs of the demo weights.

Usage (from the repository root):
    .venv/bin/python bench/segmentation.py [--model-dir bundle/models/demo] [--cases 8] [--size 128]
        [--samples 8] [--steps N] [--out segmentation.json]
Held-out phantoms (seed 99, not among the demo's training cases) go through the bundle's stored preprocessing onto
the segmenter's working grid and are scored against their own labels (body: the whole outline). Synthetic CTs of
seeds 0, 1, ... are segmented and checked with scripts.evaluation.anatomy_checks. Prints both tables, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bundle"))

from scripts.bundle_config import load_bundle_config  # noqa: E402
from scripts.data.volumes import centred_affine  # noqa: E402
from scripts.evaluation.anatomy_checks import structure_problems  # noqa: E402
from scripts.evaluation.report import markdown_table  # noqa: E402
from scripts.evaluation.segmentation import SCORED_STRUCTURES, evaluate_segmentation, working_cases  # noqa: E402
from scripts.phantoms.thorax import write_phantoms  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
HELD_OUT_SEED = 99


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=ROOT / "bundle" / "models" / "demo")
    parser.add_argument("--cases", type=int, default=8, help="held-out phantoms")
    parser.add_argument("--size", type=int, default=128, help="phantom voxels in-plane")
    parser.add_argument("--samples", type=int, default=8, help="synthetic CTs checked for plausibility")
    parser.add_argument("--steps", type=int, default=None, help="reverse steps (default: the sampler's)")
    parser.add_argument("--out", type=Path, default=None, help="JSON with every figure")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    """Score the segmenter; print the tables and return (and optionally write) the figures."""
    args = parse_args(argv)
    parser = load_bundle_config(["inference.json"], {"model_dir": str(args.model_dir)})
    segmenter = parser.get_parsed_content("segmenter")
    grid = segmenter.record["image_size"]
    with tempfile.TemporaryDirectory() as folder:
        write_phantoms(folder, n=args.cases, size=args.size, seed=HELD_OUT_SEED)
        scores = evaluate_segmentation(segmenter, working_cases(Path(folder) / "datalist.json", grid))
    rows = [{"structure": s, "mean Dice": scores["mean"][s], "min Dice": scores["min"][s]} for s in SCORED_STRUCTURES]
    print(f"Dice on {args.cases} held-out phantoms at {grid} (segmenter of {args.model_dir}):")
    print(markdown_table(rows))

    sampler = parser.get_parsed_content("generator").with_schedule(num_inference_steps=args.steps)
    affine = centred_affine(sampler.record["image_size"], sampler.spacing)
    checks, started = {}, time.perf_counter()
    for seed in range(args.samples):
        checks[seed] = structure_problems(segmenter(sampler.sample([seed])[0]), affine)
    seconds = (time.perf_counter() - started) / max(args.samples, 1)
    passed = sum(not problems for problems in checks.values())
    print(f"\nSynthetic CTs with plausible structures: {passed}/{args.samples} ({seconds:.1f} s per sample and labels)")
    for seed, problems in checks.items():
        if problems:
            print(f"  seed {seed}: {'; '.join(problems)}")
    figures = {"dice": scores, "plausibility": {str(k): v for k, v in checks.items()}, "seconds_per_sample": seconds}
    if args.out:
        args.out.write_text(json.dumps(figures, indent=2) + "\n")
    return figures


if __name__ == "__main__":
    main()
