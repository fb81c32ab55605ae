"""Benchmark: tumors inserted into held-out phantoms with the demo weights (configs/insert_tumor.json's method).

Usage (from the repository root):
    .venv/bin/python bench/tumor_insertion.py [--model-dir bundle/models/demo] [--diameters 20 40 60] [--seeds 0 1]
        [--resample-steps 1 3] [--cases 2] [--size 160 160 80] [--steps N] [--out insertion.json]
For each held-out phantom (seed 99, not among the demo's training cases), lung (right, left) and level (the upper and
lower third of the lung), diameter, seed and `resample_steps` (1: blended latent diffusion, 3: RePaint resampling), it
inserts a tumor and scores it: the share of the mask's lung voxels that became soft tissue (> -300 HU), the mask's
median HU, the Dice of the new soft tissue (voxels that were lung and are now > -300 HU, within the blend zone) with
the mask, the unchanged share outside the blend margin, the mean HU step across the blend zone's edge against the
same pairs in the input, and seconds per insertion. Prints one row per method and diameter (means) and writes every
insertion as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bundle"))

from scripts.data.labels import LABELS  # noqa: E402
from scripts.evaluation.report import markdown_table  # noqa: E402
from scripts.networks.loading import load_autoencoder, load_controlnet, load_diffusion  # noqa: E402
from scripts.phantoms.thorax import write_phantoms  # noqa: E402
from scripts.sampling.blending import blend_weights, voxel_spacing  # noqa: E402
from scripts.sampling.insertion import insert_into, native_mask  # noqa: E402
from scripts.sampling.patient_ct import read_patient_ct  # noqa: E402
from scripts.sampling.sampler import LatentDiffusionSampler  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TISSUE_HU, LUNG_HU = -300.0, -400.0
HELD_OUT_SEED = 99
FIGURES = (
    "soft_tissue_where_lung",
    "median_hu",
    "dice",
    "unchanged_outside_margin",
    "boundary_hu_step",
    "input_hu_step",
    "seconds",
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=ROOT / "bundle" / "models" / "demo")
    parser.add_argument("--diameters", type=float, nargs="+", default=[20.0, 40.0, 60.0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--resample-steps", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--cases", type=int, default=2, help="held-out phantoms")
    parser.add_argument("--size", type=int, nargs=3, default=[160, 160, 80], help="phantom voxels (x y z)")
    parser.add_argument("--steps", type=int, default=None, help="reverse steps (default: the sampler's)")
    parser.add_argument("--guidance-scale", type=float, default=3.0)
    parser.add_argument("--margin", type=float, default=10.0, help="blend_margin_mm")
    parser.add_argument("--out", type=Path, default=Path("insertion.json"))
    return parser.parse_args(argv)


def places(label_path: Path) -> dict[str, list[float]]:
    """World points (RAS mm) in the upper and lower third of each lung of a phantom's label map."""
    image = nib.load(label_path)
    voxels = np.argwhere(np.asanyarray(image.dataobj) == LABELS["lungs"])
    world = voxels @ image.affine[:3, :3].T + image.affine[:3, 3]
    found = {}
    for side, sign in (("right", 1), ("left", -1)):
        lung = world[world[:, 0] * sign > 0]
        low, high = np.percentile(lung[:, 2], [33, 67])
        found[f"{side} lower"] = lung[lung[:, 2] < low].mean(0).round(1).tolist()
        found[f"{side} upper"] = lung[lung[:, 2] > high].mean(0).round(1).tolist()
    return found


def score(before: np.ndarray, after: np.ndarray, mask: np.ndarray, report: dict, spacing, margin: float) -> dict:
    """The benchmark's figures of one insertion."""
    zone = blend_weights(mask, spacing, margin) > 0
    was_lung = before < LUNG_HU
    new_tissue = zone & was_lung & (after > TISSUE_HU)
    target = mask & was_lung
    return {
        "soft_tissue_where_lung": float((after[target] > TISSUE_HU).mean()),
        "median_hu": float(np.median(after[mask])),
        "dice": float(2.0 * (new_tissue & target).sum() / (new_tissue.sum() + target.sum())),
        "unchanged_outside_margin": report["unchanged_fraction_outside_margin"],
        "boundary_hu_step": report["boundary_hu_step"],
        "input_hu_step": report["boundary_hu_step_input"],
        "seconds": report["seconds"],
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    diffusion, controlnet = (
        load_diffusion(args.model_dir / "diffusion.pt"),
        load_controlnet(args.model_dir / "controlnet.pt"),
    )
    autoencoder = load_autoencoder(args.model_dir / "autoencoder.pt")
    sampler = LatentDiffusionSampler(
        autoencoder,
        diffusion.network,
        diffusion.record,
        "auto",
        args.steps,
        controlnet=controlnet.network,
        guidance_scale=args.guidance_scale,
    )
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        write_phantoms(folder, n=args.cases, size=args.size, seed=HELD_OUT_SEED)
        for case in sorted(p for p in Path(folder).iterdir() if p.is_dir()):
            image = case / "ct.nii.gz"
            ct = read_patient_ct(image)
            for place, centre in places(case / "label.nii.gz").items():
                for diameter in args.diameters:
                    for seed in args.seeds:
                        tumor = native_mask(ct, None, centre, diameter, seed)
                        for resample in args.resample_steps:
                            done = insert_into(sampler, ct, tumor, "tumor_center_mm", seed, args.margin, resample)
                            figures = score(ct.hu, done.hu, tumor, done.report, voxel_spacing(ct.affine), args.margin)
                            row = {"case": case.name, "place": place, "diameter_mm": diameter, "seed": seed}
                            rows.append({**row, "resample_steps": resample, **figures})
                            print(json.dumps(rows[-1]), flush=True)
    args.out.write_text(json.dumps(rows, indent=2) + "\n")
    table = []
    for resample in args.resample_steps:
        for diameter in args.diameters:
            group = [r for r in rows if r["resample_steps"] == resample and r["diameter_mm"] == diameter]
            means = {k: float(np.mean([r[k] for r in group])) for k in FIGURES}
            least = min(r["soft_tissue_where_lung"] for r in group)
            table.append(
                {
                    "method": "blended" if resample == 1 else f"RePaint x{resample}",
                    "diameter mm": f"{diameter:g}",
                    "n": len(group),
                    "soft tissue where lung": f"{means['soft_tissue_where_lung']:.2f} (min {least:.2f})",
                    "median HU": f"{means['median_hu']:.0f}",
                    "Dice": f"{means['dice']:.2f}",
                    "unchanged outside margin": f"{means['unchanged_outside_margin']:.4f}",
                    "edge step / input (HU)": f"{means['boundary_hu_step']:.0f} / {means['input_hu_step']:.0f}",
                    "s per insertion": f"{means['seconds']:.1f}",
                }
            )
    print(markdown_table(table))


if __name__ == "__main__":
    main()
