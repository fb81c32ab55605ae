"""Performance benchmark of the bundle: sampling speed and quality, speed options, FLOPs, the high-resolution budget,
tiled decoding, training speed and memory.

Usage (from the repository root; the same command on a CUDA machine and on a CPU):
    .venv/bin/python bench/performance.py [--model-dir bundle/models/demo] [--other-diffusion PATH] [--samples 8]
        [--samplers ddpm-1000 ddim-100 ...] [--sizes demo thesis] [--budget-sizes highres highres-256]
        [--only sampling variants flops budget decoding training] [--update] [--override KEY=JSON ...]
        [--out-dir bundle/docs]
It prints every table and writes `<out-dir>/benchmark_gpu.md` (with the card's name) or
`benchmark_cpu.md`, and the same figures as `benchmark_<gpu|cpu>.json`; with `--update` the sections
this run does not redo are kept from those files, under the header of the run that wrote them.
Timings mean little while other jobs share the machine: the header records the load and any bundle
workflow running beside it.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from budget import TARGETS_GIB, budget_rows, reference_rates, summary_rows  # noqa: E402
from configurations import SIZES, Configuration, configurations  # noqa: E402
from decoding import decode_memory_rows, tiling_rows  # noqa: E402
from flops import flops_rows, matmul_peak_tflops, network_seconds  # noqa: E402
from measure import device_memory_gib, device_name, machine  # noqa: E402
from sampling_speed import (  # noqa: E402
    TrainedModel,
    default_sampler,
    evaluation_parser,
    predicted_rows,
    reference_dir,
    trained_sampler_rows,
    variant_rows,
)
from training_speed import STAGES, autoencoder_memory_options, benchmark_stage  # noqa: E402

from scripts.evaluation.report import markdown_table  # noqa: E402
from scripts.networks.loading import AUTOENCODER_FILE, DIFFUSION_FILE  # noqa: E402
from scripts.networks.tile_plan import AUTO_TILE  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = (
    "sampling",
    "flops",
    "budget",
    "decoding",
    "training",
    "variants",
)  # variants last: torch.compile may take long
#: Sections that need no trained weights.
UNTRAINED_SECTIONS = ("flops", "budget", "training")
SAMPLERS = ["ddpm-1000", "ddim-100", "ddim-50", "ddim-25", "ddim-10", "rflow-30", "rflow-10"]

#: Speed options of the default sampler, by name (float16 and compile are tried on CUDA by default).
VARIANTS = {
    "float32": {"precision": "float32"},
    "bfloat16": {"precision": "bfloat16"},
    "float16": {"precision": "float16"},
    "compile": {"compile": True},
    "tiled": {"decode_tile": "half"},
    "batch4": {"batch_size": 4},
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; see the module docstring."""
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if cuda else "cpu")
    parser.add_argument(
        "--model-dir", type=Path, default=ROOT / "bundle" / "models" / "demo", help="trained weights to sample"
    )
    parser.add_argument(
        "--other-diffusion",
        type=Path,
        default=None,
        help="a diffusion.pt trained with the other schedule (DDPM or RFlow) on the same autoencoder",
    )
    parser.add_argument(
        "--reference-dir", type=Path, default=None, help="reference CTs for FID (default: held-out phantoms)"
    )
    parser.add_argument("--reference-cases", type=int, default=16)
    parser.add_argument(
        "--feature-weights",
        type=Path,
        default=None,
        help="RadImageNet ResNet-50 weights for FID (default: the autoencoder)",
    )
    parser.add_argument("--samples", type=int, default=8, help="volumes per sampler for FID")
    parser.add_argument("--samplers", nargs="+", default=SAMPLERS)
    parser.add_argument(
        "--variants",
        nargs="+",
        default=[v for v in VARIANTS if cuda or v not in ("float16", "compile")],
        choices=list(VARIANTS),
    )
    parser.add_argument(
        "--sizes",
        nargs="+",
        default=["demo", "thesis"],
        help=f"configurations of the flops, decoding and training sections, among {list(SIZES)}",
    )
    parser.add_argument(
        "--budget-sizes",
        nargs="+",
        default=["highres", "highres-256"],
        help=f"configurations of the budget section, among {list(SIZES)}",
    )
    parser.add_argument(
        "--budget-tile",
        type=int,
        default=AUTO_TILE,
        help='latent voxels per tile of the budget\'s tiled encoding and decoding (default: the tile of "auto")',
    )
    parser.add_argument(
        "--reference-rates",
        type=Path,
        default=ROOT / "bundle" / "docs" / "benchmark_gpu.json",
        help="a GPU run's JSON whose measured TFLOP/s predict the budget's seconds",
    )
    parser.add_argument(
        "--measure-budget",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also run the budget's works on the device (default: on CUDA only)",
    )
    parser.add_argument(
        "--update", action="store_true", help="keep the sections of the existing page that this run does not redo"
    )
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="KEY=JSON",
        help="config override for every size (repeatable)",
    )
    parser.add_argument("--only", nargs="+", default=list(SECTIONS), choices=SECTIONS)
    parser.add_argument(
        "--decode-grids", nargs="+", type=int, default=[128, 256], help="grids of the thesis decoder's memory estimate"
    )
    parser.add_argument(
        "--train-iterations", type=int, default=2, help="timed iterations per training measurement (after one warm-up)"
    )
    parser.add_argument("--max-batch", type=int, default=32, help="largest training batch size tried")
    parser.add_argument(
        "--memory-budget-gib", type=float, default=None, help="default: 90%% of the GPU, or half the available RAM"
    )
    parser.add_argument("--out-dir", type=Path, default=ROOT / "bundle" / "docs")
    parser.add_argument(
        "--work-dir", type=Path, default=None, help="samples and reference phantoms (default: a temporary folder)"
    )
    return parser.parse_args(argv)


def overrides(pairs: list[str]) -> dict[str, Any]:
    """`KEY=JSON` pairs as a dict; the error names --override."""
    result = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"--override takes KEY=JSON, got {pair!r}")
        result[key] = json.loads(value)
    return result


def has_weights(model_dir: Path) -> bool:
    """Whether `model_dir` holds an autoencoder and a diffusion checkpoint."""
    return (model_dir / AUTOENCODER_FILE).is_file() and (model_dir / DIFFUSION_FILE).is_file()


def sampling_section(args: argparse.Namespace, device: torch.device, work_dir: Path) -> dict[str, Any]:
    """Seconds per volume and FID of every sampler on the trained weights, and the default sampler's verdict."""
    model = TrainedModel.load(args.model_dir, args.other_diffusion, device)
    grid = model.record["image_size"][0]
    reference = reference_dir(args.reference_dir, work_dir, args.reference_cases)
    parser = evaluation_parser(model, reference, work_dir, grid, device, args.feature_weights)
    rows = trained_sampler_rows(model, args.samplers, parser, list(range(args.samples)), work_dir, device)
    return {
        "model_dir": str(args.model_dir),
        "grid": grid,
        "feature_network": parser.get_parsed_content("feature_network").name,
        "rows": rows,
        "verdict": verdict(rows, default_sampler(model.record)),
    }


def verdict(rows: list[dict[str, Any]], default_spec: str) -> str:
    """The default sampler (`default_spec`) against DDPM-1000: speed-up and FID of both."""
    by_name = {r["sampler"]: r for r in rows}
    default, ddpm = by_name.get(default_spec), by_name.get("ddpm-1000")
    if default is None or ddpm is None:
        return f"default sampler {default_spec} or ddpm-1000 not run"
    speedup = ddpm["seconds_per_volume"] / default["seconds_per_volume"]
    return (
        f"default sampler {default['sampler']}: {speedup:.1f}x faster than ddpm-1000 "
        f"({default['seconds_per_volume']:.2f} s vs {ddpm['seconds_per_volume']:.2f} s per volume); "
        f"FID {default['fid_2p5d']:.4g} vs {ddpm['fid_2p5d']:.4g} (lower is better)"
    )


def variants_section(args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    """The default sampler with each speed option, on the trained weights."""
    model = TrainedModel.load(args.model_dir, args.other_diffusion, device)
    half_latent = model.record["latent_shape"][1] // 2
    variants = [{k: half_latent if v == "half" else v for k, v in VARIANTS[name].items()} for name in args.variants]
    return variant_rows(model, default_sampler(model.record), variants, device)


def flops_section(configs: list[Configuration], samplers: list[str], device: torch.device) -> dict[str, Any]:
    """FLOPs and achieved fraction of the measured peak per configuration, and sampling times predicted from them."""
    dtypes = {"float32": torch.float32, **({"bfloat16": torch.bfloat16} if device.type == "cuda" else {})}
    peaks = {name: matmul_peak_tflops(device, dtype) for name, dtype in dtypes.items()}
    rows, predicted = [], []
    for config in configs:
        for precision in dtypes:
            seconds = network_seconds(config, device, precision)
            rows += flops_rows(config, seconds, peaks[precision], precision)
            predicted += [{**r, "precision": precision} for r in predicted_rows(config, samplers, seconds)]
    return {"peak_tflops": peaks, "rows": rows, "predicted_sampling": predicted}


def decoding_section(args: argparse.Namespace, device: torch.device, configs: list[Configuration]) -> dict[str, Any]:
    """Whole versus tiled decoding on the trained weights (measured) and of the thesis decoder at 128^3 and 256^3 (estimated)."""
    model = TrainedModel.load(args.model_dir, args.other_diffusion, device)
    sampler = model.sampler(default_sampler(model.record), device)
    latent = sampler.record["latent_shape"][1]
    measured = tiling_rows(sampler, [None, latent // 2])
    thesis = [c for c in configs if c.name == "thesis"]
    large = [
        Configuration(c.name, c.overlays, {**c.overrides, "grid_size": g}) for c in thesis for g in args.decode_grids
    ]
    return {"measured": measured, "estimated": decode_memory_rows(large, [None, 32, 16])}


def memory_budget(args: argparse.Namespace, device: torch.device) -> float:
    """GiB a measurement may use: --memory-budget-gib, else 90% of the GPU or half the available RAM."""
    return args.memory_budget_gib or (0.9 if device.type == "cuda" else 0.5) * device_memory_gib(device)


def budget_section(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Per high-resolution size, stage and work: estimated (and on a GPU measured) peak memory against the targets, and seconds."""
    configs = configurations(args.budget_sizes, overrides(args.override))
    rates = reference_rates(args.reference_rates)
    measure = device.type == "cuda" if args.measure_budget is None else args.measure_budget
    budget = memory_budget(args, device)
    rows, summary = [], []
    for config in configs:
        config_rows = budget_rows(config, args.budget_tile, rates, device if measure else None, budget)
        rows += config_rows
        summary += summary_rows(config, config_rows)
    return {
        "targets_gib": TARGETS_GIB,
        "tile": args.budget_tile,
        "rates": asdict(rates) if rates else None,
        "measured_on": device_name(device) if measure else None,
        "memory_budget_gib": budget if measure else None,
        "summary": summary,
        "rows": rows,
    }


def training_section(args: argparse.Namespace, device: torch.device, configs: list[Configuration]) -> dict[str, Any]:
    """Seconds per iteration and peak memory per stage and configuration; autoencoder memory options at the thesis size."""
    budget = memory_budget(args, device)
    rows = [
        row
        for config in configs
        for stage in STAGES
        for row in benchmark_stage(config, stage, device, args.train_iterations, args.max_batch, budget)
    ]
    options = [row for config in configs if config.name == "thesis" for row in autoencoder_memory_options(config)]
    return {"memory_budget_gib": budget, "rows": rows, "autoencoder_memory_options": options}


def markdown(results: dict[str, Any]) -> str:
    """The benchmark as a Markdown page: runs, machine and conditions, what is estimated or measured, then one table per section."""
    m = results["machine"]
    lines = [
        f"# Performance benchmark ({m['device_type'].upper()}: {m['device']})",
        "",
        *run_lines(results, "Measured"),
        *[line for run in results.get("earlier_runs", []) for line in run_lines(run, "Kept from an earlier run:")],
        "",
        "Estimated, predicted or measured: `estimated_*` columns are live tensor bytes on fake tensors (no device "
        "needed; `bench/memory_estimate.py`); `predicted_*` columns are computed, not run (the FLOPs section's from its "
        "measured U-Net step and decode, the budget's from counted FLOPs over the rates measured on the GPU it names; "
        "`seconds_at_peak` at that GPU's matmul peak); `measured_*` columns and every other figure were measured on the "
        "machine of the run that wrote the section.",
        "",
    ]
    for title, text, table in section_tables(results):
        lines += [f"## {title}", "", text, "", markdown_table(uniform(table)) if table else "(no rows)", ""]
    return "\n".join(lines)


def run_lines(run: dict[str, Any], verb: str) -> list[str]:
    """The header lines of one run: its sections, date and command, machine and load."""
    m = run["machine"]
    memory = "GPU memory" if m["device_type"] == "cuda" else "RAM available"
    return [
        f"{verb} sections {', '.join(run['sections'])} on {run['date']} with `{run['command']}`.",
        f"Machine: {m['device']}, {m['cpu_cores']} CPU cores, {m['torch_threads']} torch threads, {m['memory_gib']} GiB "
        f"{memory}, torch {m['torch']}. Load: 1-minute load average {m['load_average_1min']} at the start; "
        f"{m['other_bundle_workflows_running']} other `monai.bundle run` processes running.",
    ]


def earlier_runs(previous: dict[str, Any], redone: set[str]) -> list[dict[str, Any]]:
    """The runs behind the sections of `previous` (an earlier page's JSON) that this run does not redo, with those sections."""
    runs = previous.get("earlier_runs", [])
    claimed = {n for run in runs for n in run["sections"]}
    own = previous.get("sections", [n for n in SECTIONS if n in previous and n not in claimed])
    runs = [*runs, {**{k: previous[k] for k in ("machine", "date", "command")}, "sections": own}]
    kept = [{**run, "sections": [n for n in run["sections"] if n not in redone]} for run in runs]
    return [run for run in kept if run["sections"]]


def uniform(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows with every column any of them has (missing cells empty), in first-seen order, for one table."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    return [{c: row.get(c) for c in columns} for row in rows]


def section_tables(results: dict[str, Any]) -> list[tuple[str, str, list[dict[str, Any]]]]:
    """(title, explanation, rows) of each section that ran."""
    tables = []
    if "sampling" in results:
        s = results["sampling"]
        text = (
            f"Trained weights `{s['model_dir']}` ({s['grid']}^3), batch 1, the same seeds for every sampler; seconds from noise to HU volume. "
            f"FID: 2.5D, features from the {s['feature_network']}, against held-out phantoms. {s['verdict']}."
        )
        tables.append(("Sampling: speed and quality per sampler, measured", text, s["rows"]))
    if "variants" in results:
        text = "The default sampler with one speed option each (4 seeds); `max_abs_hu_difference` is against the float32 batch-1 volumes of the same seeds."
        tables.append(("Sampling: speed options, measured", text, results["variants"]))
    if "flops" in results:
        f = results["flops"]
        peaks = ", ".join(f"{k} {v:.3g} TFLOP/s" for k, v in f["peak_tflops"].items())
        tables.append(
            (
                "FLOPs and achieved fraction of peak, measured",
                f"Untrained networks, batch 1; FLOPs counted, seconds measured. Measured matmul peak: {peaks}.",
                f["rows"],
            )
        )
        tables.append(
            (
                "Sampling time per volume, predicted",
                "Steps x one measured U-Net step + one measured decode (untrained networks; DDPM runs all 1000 steps).",
                f["predicted_sampling"],
            )
        )
    if "budget" in results:
        tables += budget_tables(results["budget"])
    if "decoding" in results:
        d = results["decoding"]
        tables.append(
            (
                "Tiled decoding, measured",
                "One random latent on the trained weights, decoded whole and in tiles of `decode_tile` latent voxels (whole-volume norm statistics, halo as wide as the receptive field).",
                d["measured"],
            )
        )
        tables.append(
            (
                "Decoding memory, estimated",
                "Thesis decoder, float32, tiles of 32 and 16 latent voxels, live tensor bytes on fake tensors (an estimate of CUDA max allocated): as loaded for sampling (scaled dot-product attention) and with the explicit attention matrix (without the memory-efficient kernel).",
                d["estimated"],
            )
        )
    if "training" in results:
        t = results["training"]
        text = (
            f"Each stage's own trainer on a synthetic batch, after one warm-up iteration; batch 1 and the largest that ran within "
            f"{t['memory_budget_gib']:.1f} GiB (or up to --max-batch). `estimated_gib`: live tensors on fake tensors at this run's precision."
        )
        tables.append(("Training: seconds per iteration and peak memory, measured", text, t["rows"]))
        tables.append(
            (
                "Autoencoder training memory options, estimated",
                "One VAE-GAN iteration, live tensor bytes on fake tensors (GPU estimate).",
                t["autoencoder_memory_options"],
            )
        )
    return tables


def budget_tables(budget: dict[str, Any]) -> list[tuple[str, str, list[dict[str, Any]]]]:
    """The budget section's tables: per stage against the targets, then per work."""
    rates = budget["rates"]
    source = (
        f"predicted at the TFLOP/s measured on the {rates['device']} of `{rates['source']}` (its largest grid; "
        "the training stages' from its measured iterations, a half-precision work at its bfloat16 rate), "
        "`seconds_at_peak` at that device's measured matmul peak (a floor)"
        if rates
        else "not predicted (no --reference-rates file)"
    )
    measured = (
        f"Every work was also run on the {budget['measured_on']} (`measured_*`: CUDA max allocated and seconds after a warm-up)."
        if budget["measured_on"]
        else "Nothing in this section was measured: estimates and predictions only (run it on a GPU to measure)."
    )
    targets = ", ".join(f"{phase} {gib:g} GiB" for phase, gib in budget["targets_gib"].items())
    summary = (
        f"Peak GPU memory of each stage (the largest of its works) with its whole-volume work whole (`*peak_gib_whole`) or "
        f"in tiles of {budget['tile']} latent voxels (`*peak_gib_tiled`), against the targets ({targets}). With the default "
        f'options (`encode_tile` / `decode_tile` "auto") a card of the target\'s size runs the whole-volume work as '
        f"`auto_on_target_card` says, and `*meets_target` is for that choice. Seconds per training iteration or per sampled volume "
        f"(steps x one denoising step + one decode), {source}. Estimates: live tensor bytes on fake tensors, CUDA AMP "
        f"modeled (norms and softmax in float32); add about 0.5 GiB of CUDA context and cuDNN workspace on a card. {measured}"
    )
    detail = (
        "Each work of each stage, batch 1: training iterations at the configured AMP and checkpointing (the "
        "autoencoder on one training patch, discriminator on, perceptual loss off), whole-volume works whole and "
        "tiled, sampling at inference.json's precision; the other networks a stage keeps on the GPU are counted in."
    )
    return [
        ("Budget per stage: peak GPU memory against the targets, and seconds", summary, budget["summary"]),
        ("Budget per work, estimated" + (" and measured" if budget["measured_on"] else ""), detail, budget["rows"]),
    ]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the selected sections, print their tables, write the Markdown page and JSON; returns the results."""
    args = parse_args(argv)
    device = torch.device(args.device)
    configs = configurations(args.sizes, overrides(args.override))
    trained = has_weights(args.model_dir)
    if not trained:
        print(
            f"no trained weights in {args.model_dir}: skipping the sampling, variants and decoding measurements that need them"
        )
    chosen = [n for n in SECTIONS if n in args.only and (trained or n in UNTRAINED_SECTIONS)]
    results: dict[str, Any] = {
        "machine": machine(device),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "command": " ".join(["bench/performance.py", *(argv or sys.argv[1:])]),
        "sections": [],
        **(kept_results(page_path(args.out_dir, device, "json"), set(chosen)) if args.update else {}),
    }
    sections = {
        "sampling": lambda: sampling_section(args, device, work_dir),
        "variants": lambda: variants_section(args, device),
        "flops": lambda: flops_section(configs, args.samplers, device),
        "budget": lambda: budget_section(args, device),
        "decoding": lambda: decoding_section(args, device, configs),
        "training": lambda: training_section(args, device, configs),
    }
    with tempfile.TemporaryDirectory() as tmp:
        work_dir = args.work_dir or Path(tmp)
        for name in chosen:
            start = time.perf_counter()
            results[name] = sections[name]()
            results["sections"].append(name)
            print(f"{name}: measured in {time.perf_counter() - start:.0f} s", flush=True)
            write_results(results, args.out_dir, device)
    print(markdown(results))
    return results


def page_path(out_dir: Path, device: torch.device, suffix: str) -> Path:
    """`<out_dir>/benchmark_gpu.<suffix>` on CUDA, `benchmark_cpu.<suffix>` otherwise."""
    return out_dir / f"benchmark_{'gpu' if device.type == 'cuda' else 'cpu'}.{suffix}"


def kept_results(path: Path, redone: set[str]) -> dict[str, Any]:
    """For --update: the sections of the JSON at `path` that this run does not redo, and the runs that wrote them."""
    if not path.is_file():
        return {}
    previous = json.loads(path.read_text())
    kept = {n: previous[n] for n in SECTIONS if n in previous and n not in redone}
    return {"earlier_runs": earlier_runs(previous, redone), **kept} if kept else {}


def write_results(results: dict[str, Any], out_dir: Path, device: torch.device) -> None:
    """Write the page and the JSON of the sections measured so far (after each one, so a run cut short keeps them)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    page_path(out_dir, device, "md").write_text(markdown(results))
    page_path(out_dir, device, "json").write_text(json.dumps(results, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
