"""Benchmark: does the tumor go where it is asked? Adherence of conditioned samples against unconditional ones.

Usage (from the repository root):
    .venv/bin/python bench/tumor_adherence.py [--model-dir bundle/models/demo] [--seeds 0 1 2] [--diameter 40]
        [--centres "80,0,20;-80,0,20;..."] [--steps N] [--guidance-scale 1] [--phantoms bundle/data/phantoms]
        [--out adherence.json]
For every centre (RAS mm from the volume centre; +x is the patient's right) and seed, it samples the
tumor-conditioned CT and the unconditional CT of the same seed, scores both against the requested
mask with `scripts.evaluation.adherence.tumor_adherence`, prints one row per sample and the means, and writes
the rows as JSON. The conditioned sample should turn most of the mask into soft tissue; the
unconditional one should not have it there. With `--phantoms`, it first checks that the autoencoder
can represent tumors at all: the share of GTV voxels above -300 HU in training cases and in their
reconstructions (a tumor the decoder cannot draw, no ControlNet can place).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bundle"))

from monai.data import load_decathlon_datalist  # noqa: E402

from scripts.data.volumes import to_hu  # noqa: E402
from scripts.evaluation.adherence import tumor_adherence  # noqa: E402
from scripts.evaluation.report import markdown_table  # noqa: E402
from scripts.networks.loading import load_autoencoder, load_controlnet, load_diffusion  # noqa: E402
from scripts.sampling.sampler import LatentDiffusionSampler  # noqa: E402
from scripts.sampling.tumor_request import mask_from_centre  # noqa: E402
from scripts.transforms.conditioning import tumor_condition  # noqa: E402
from scripts.transforms.preprocess import preprocessing_chain  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
#: Default requested centres: both lungs, upper and lower, in the demo grid's frame.
CENTRES = "80,0,20;-80,0,20;80,20,-40;-80,20,-40"
TISSUE_HU = -300.0
FIGURES = ("dice", "centroid_distance_mm", "mask_soft_tissue_fraction", "mask_median_hu", "mask_in_lungs_fraction")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=ROOT / "bundle" / "models" / "demo")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--centres", default=CENTRES, help="tumor centres as x,y,z in RAS mm, separated by ';'")
    parser.add_argument("--diameter", type=float, default=40.0, help="tumor diameter in mm")
    parser.add_argument("--steps", type=int, default=None, help="reverse steps (default: the sampler's)")
    parser.add_argument(
        "--guidance-scale", type=float, default=1.0, help="classifier-free tumor guidance (1: plain conditioning)"
    )
    parser.add_argument(
        "--phantoms", type=Path, default=None, help="training cases (datalist.json) for the reconstruction check"
    )
    parser.add_argument("--cases", type=int, default=4, help="cases of --phantoms to reconstruct")
    parser.add_argument("--out", type=Path, default=None, help="JSON file for the rows and means")
    return parser.parse_args(argv)


@torch.no_grad()
def reconstruction_rows(sampler: LatentDiffusionSampler, dataset_dir: Path, cases: int) -> list[dict]:
    """Per training case: GTV voxels above TISSUE_HU in the preprocessed CT and in the autoencoder's reconstruction of it."""
    record = sampler.record
    preprocessing = preprocessing_chain(record["image_size"])[0]
    rows = []
    for item in load_decathlon_datalist(str(dataset_dir / "datalist.json"), True, "training")[:cases]:
        data = preprocessing(item)
        image, masks = data["image"][None].float(), data["masks"]
        tumor = ((masks[0] + masks[1]) > 0).numpy()
        if not tumor.any():
            continue
        reconstruction = sampler.autoencoder.decode_stage_2_outputs(sampler.autoencoder.encode_stage_2_inputs(image))
        original, decoded = (to_hu(x[0, 0], record["hu_window"]) for x in (image, reconstruction))
        rows.append(
            {
                "case": Path(item["image"]).parent.name,
                "gtv_voxels": int(tumor.sum()),
                "original_gtv_tissue_fraction": float((original[tumor] > TISSUE_HU).mean()),
                "reconstructed_gtv_tissue_fraction": float((decoded[tumor] > TISSUE_HU).mean()),
            }
        )
    return rows


def adherence_rows(
    sampler: LatentDiffusionSampler, centres: list[list[float]], seeds: list[int], diameter: float
) -> list[dict]:
    """One row per centre and seed: adherence of the conditioned sample and of the unconditional one to the same mask."""
    plain = {seed: sampler.sample([seed])[0] for seed in seeds}
    rows = []
    for centre in centres:
        for seed in seeds:
            mask, _ = mask_from_centre(sampler.record, centre, diameter, seed)
            conditioned = sampler.sample([seed], tumor_condition(mask))[0]
            row = {"centre_mm": centre, "seed": seed}
            for kind, hu in (("conditioned", conditioned), ("unconditional", plain[seed])):
                row.update({f"{kind}_{k}": v for k, v in tumor_adherence(hu, mask, sampler.spacing, TISSUE_HU).items()})
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def means(rows: list[dict]) -> dict[str, float]:
    """Mean of every figure over the rows (a missing centroid distance, no tumor-like tissue found, is left out)."""
    result = {}
    for kind in ("conditioned", "unconditional"):
        for figure in FIGURES:
            values = [r[f"{kind}_{figure}"] for r in rows if r[f"{kind}_{figure}"] is not None]
            result[f"{kind}_{figure}"] = float(np.mean(values)) if values else None
    return result


def main(argv: list[str] | None = None) -> dict:
    """Sample, score, print the table and the means, and write them as JSON when asked."""
    args = parse_args(argv)
    unet, record = load_diffusion(args.model_dir / "diffusion.pt")
    controlnet, _ = load_controlnet(args.model_dir / "controlnet.pt")
    sampler = LatentDiffusionSampler(
        load_autoencoder(args.model_dir / "autoencoder.pt"),
        unet,
        record,
        "auto",
        args.steps,
        controlnet=controlnet,
        guidance_scale=args.guidance_scale,
    )
    result = {
        "model_dir": str(args.model_dir),
        "diameter_mm": args.diameter,
        "sampler": sampler.sampler_name,
        "steps": sampler.num_inference_steps,
        "guidance_scale": args.guidance_scale,
    }
    if args.phantoms:
        result["reconstruction"] = reconstruction_rows(sampler, args.phantoms, args.cases)
        print(markdown_table(result["reconstruction"]))
    centres = [[float(v) for v in c.split(",")] for c in args.centres.split(";")]
    rows = adherence_rows(sampler, centres, args.seeds, args.diameter)
    result.update({"rows": rows, "means": means(rows)})
    short = [
        {
            "centre_mm": r["centre_mm"],
            "seed": r["seed"],
            **{k: r[k] for k in r if k.endswith(("dice", "distance_mm", "soft_tissue_fraction", "median_hu"))},
        }
        for r in rows
    ]
    print(markdown_table(short))
    print(markdown_table([result["means"]]))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
