"""Performance features: exact tiled decoding, rectified-flow training and sampling, autocast, and the benchmark's own measures."""

import json
import os
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch
from budget import Rates, budget_rows, summary_rows
from configurations import Configuration
from flops import count_flops, decode_flops, unet_step_flops
from memory_estimate import Work, estimate, mixed_precision
from monai.engines.utils import DiffusionPrepareBatch
from monai.networks.nets import AutoencoderKL
from monai.networks.schedulers import DDPMScheduler, RFlowScheduler
from performance import kept_results, markdown
from training_speed import STAGES, autoencoder_step_work

from helpers import BUNDLE, TINY, run_bundle, train_in_process, training_overrides
from scripts.networks.loading import load_autoencoder, load_controlnet, load_diffusion
from scripts.networks.schedules import controlnet_scheduler, trained_schedule, training_scheduler
from scripts.networks.tiling import TiledDecoder
from scripts.sampling.sampler import LatentDiffusionSampler, denoise, make_scheduler
from scripts.training.prepare_batch import RectifiedFlowPrepareBatch

RFLOW_SCHEDULE = {
    "num_train_timesteps": 1000,
    "use_discrete_timesteps": True,
    "sample_method": "logit-normal",
    "use_timestep_transform": False,
}


@pytest.fixture(scope="module")
def rflow_dir(trained, phantom_dir, tmp_path_factory):
    """A model folder with the tiny autoencoder and a diffusion U-Net trained with rectified flow (configs/rflow.json)."""
    ckpt = tmp_path_factory.mktemp("rflow")
    overrides = {
        **training_overrides(phantom_dir, ckpt),
        "autoencoder_path": str(trained.dir / "autoencoder.pt"),
        "max_epochs": 3,
    }
    initial = train_in_process(["train_diffusion.json", "demo.json", "rflow.json"], "network", overrides)
    shutil.copy(trained.dir / "autoencoder.pt", ckpt / "autoencoder.pt")
    return ckpt, initial


def test_tiled_decoding_equals_whole_decoding(trained):
    autoencoder = load_autoencoder(trained.dir / "autoencoder.pt")
    latents = torch.randn((2, autoencoder.latent_channels, 8, 8, 8), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        whole = autoencoder.decode(latents)
    for tile in (3, [8, 4, 5]):  # uneven tiles, and tiles as long as the volume along one axis
        tiled = TiledDecoder(autoencoder, tile)
        assert tiled.halo == 3, "2.5 latent voxels of receptive field above the latent resolution, rounded up"
        assert torch.allclose(tiled(latents), whole, atol=1e-4), f"tile {tile}"
    assert whole.std() > 0.05, "a non-trivial volume"


def test_sampler_decodes_tiles_to_the_same_hu(trained):
    unet, record = load_diffusion(trained.dir / "diffusion.pt")
    autoencoder = load_autoencoder(trained.dir / "autoencoder.pt")
    whole = LatentDiffusionSampler(autoencoder, unet, record, "ddim", 4).sample([5])[0].astype(int)
    tiled = LatentDiffusionSampler(autoencoder, unet, record, "ddim", 4, decode_tile=3).sample([5])[0].astype(int)
    assert np.abs(tiled - whole).max() <= 1, "equal up to HU rounding"
    assert whole.max() - whole.min() > 200


def test_tiling_is_refused_where_it_would_cut_attention_or_has_no_size():
    kwargs = {"spatial_dims": 3, "channels": [8, 8, 8], "latent_channels": 3, "num_res_blocks": 1, "norm_num_groups": 4}
    with pytest.raises(ValueError, match="attention above the latent resolution"):
        TiledDecoder(AutoencoderKL(**kwargs, attention_levels=[False, True, True]), 4)
    with pytest.raises(ValueError, match="decode_tile"):
        TiledDecoder(AutoencoderKL(**kwargs, attention_levels=[False, False, False]), 0)


def test_rectified_flow_batches_target_the_velocity():
    scheduler = RFlowScheduler(**RFLOW_SCHEDULE)
    torch.manual_seed(0)
    images = torch.randn(4, 3, 4, 4, 4)
    weight = torch.full((4, 1, 4, 4, 4), 2.0)
    inner = DiffusionPrepareBatch(1000)

    def weighted(batch, device=None, non_blocking=False):
        """A prepare-batch whose target carries a loss-weight channel, as the ControlNet stage's does."""
        images, target, args, kwargs = inner(batch, device, non_blocking)
        return images, torch.cat([target, weight], 1), args, kwargs

    _, target, _, kwargs = RectifiedFlowPrepareBatch(scheduler, weighted)({"image": images})
    assert torch.equal(target[:, :3], images - kwargs["noise"]), "velocity from noise to data"
    assert torch.equal(target[:, 3:], weight), "extra target channels (loss weights) are kept"
    assert (
        kwargs["timesteps"].dtype == torch.long and kwargs["timesteps"].min() >= 0 and kwargs["timesteps"].max() < 1000
    )
    with pytest.raises(ValueError, match="RFlowScheduler"):
        RectifiedFlowPrepareBatch(DDPMScheduler(), inner)


def test_rflow_sampling_follows_an_exact_velocity_to_the_data():
    """With the true velocity of a straight path to x0, the sampler's Euler steps land on x0 from any noise."""
    x0 = torch.randn((1, 3, 4, 4, 4), generator=torch.Generator().manual_seed(3))

    def velocity(x, timesteps):
        return (x0 - x) / (timesteps.float().view(-1, 1, 1, 1, 1) / 1000.0)

    scheduler = make_scheduler("rflow", RFLOW_SCHEDULE, 7, schedule_type="rflow", latent_numel=64)
    noise = torch.randn((1, 3, 4, 4, 4), generator=torch.Generator().manual_seed(4))
    result = denoise(velocity, scheduler, noise, [torch.Generator()], progress=False)
    assert torch.allclose(result, x0, atol=1e-4)
    assert scheduler.timesteps.tolist()[0] == 1000 and len(scheduler.timesteps) == 7


def test_samplers_are_refused_on_models_trained_with_another_schedule():
    ddpm = {
        "num_train_timesteps": 1000,
        "schedule": "scaled_linear_beta",
        "beta_start": 0.0015,
        "beta_end": 0.0195,
        "clip_sample": False,
    }
    with pytest.raises(
        ValueError, match="sampler 'ddim' cannot sample a model trained with the 'rflow' schedule; use sampler rflow"
    ):
        make_scheduler("ddim", RFLOW_SCHEDULE, 10, schedule_type="rflow")
    with pytest.raises(ValueError, match="sampler 'rflow' cannot sample a model trained with the 'ddpm' schedule"):
        make_scheduler("rflow", ddpm, 10, schedule_type="ddpm")
    with pytest.raises(ValueError, match="noise_schedule does not fit schedule_type 'rflow'"):
        training_scheduler("rflow", ddpm)
    assert trained_schedule({}) == "ddpm", "records from before RFlow are DDPM"
    assert isinstance(
        controlnet_scheduler({"schedule_type": "rflow", "noise_schedule": RFLOW_SCHEDULE}), RFlowScheduler
    )
    assert isinstance(controlnet_scheduler({"noise_schedule": ddpm}), DDPMScheduler), "records from before RFlow"


def test_rflow_training_records_its_schedule(rflow_dir):
    ckpt, initial = rflow_dir
    unet, record = load_diffusion(ckpt / "diffusion.pt")
    assert record["schedule_type"] == "rflow" and record["noise_schedule"] == RFLOW_SCHEDULE
    changed = [not torch.equal(v, initial[k]) for k, v in unet.state_dict().items() if v.is_floating_point()]
    assert sum(changed) / len(changed) > 0.9


def test_rflow_model_samples_through_the_inference_config(rflow_dir, trained, tmp_path):
    ckpt, _ = rflow_dir
    overrides = {"model_dir": str(ckpt), "output_dir": str(tmp_path), "num_samples": 2, "batch_size": 2, "seed": 1}
    overrides["structures"] = False  # the rflow folder holds no segmenter
    run_bundle(["inference.json"], {**overrides, "num_inference_steps": 5})  # sampler auto: rflow for this model
    volumes = [np.asanyarray(nib.load(tmp_path / f"sample_seed{s}_ct.nii.gz").dataobj) for s in (1, 2)]
    assert volumes[0].shape == (TINY["grid_size"],) * 3 and volumes[0].min() >= -1000 and volumes[0].max() <= 1000
    assert np.abs(volumes[0].astype(int) - volumes[1]).mean() > 5, "other seeds give other volumes"
    refused = run_bundle(
        ["inference.json"], {**overrides, "output_dir": str(tmp_path / "ddim"), "sampler": "ddim"}, check=False
    )
    assert (
        refused.returncode != 0
        and "cannot sample a model trained with the 'rflow' schedule" in refused.stderr + refused.stdout
    )
    refused = run_bundle(
        ["inference.json"],
        {**overrides, "model_dir": str(trained.dir), "output_dir": str(tmp_path / "d"), "sampler": "rflow"},
        check=False,
    )
    assert (
        refused.returncode != 0
        and "cannot sample a model trained with the 'ddpm' schedule" in refused.stderr + refused.stdout
    )


def test_controlnet_trains_on_an_rflow_model_with_the_contrastive_pair(rflow_dir, phantom_dir, tmp_path):
    ckpt, _ = rflow_dir
    overrides = {
        **training_overrides(phantom_dir, tmp_path),
        "autoencoder_path": str(ckpt / "autoencoder.pt"),
        "diffusion_path": str(ckpt / "diffusion.pt"),
        "max_epochs": 2,
        "contrastive_loss_weight": 0.01,
    }
    initial = train_in_process(["train_controlnet.json", "demo.json"], "controlnet", overrides)
    controlnet, record = load_controlnet(tmp_path / "controlnet.pt")
    assert record["contrastive_loss_weight"] == 0.01
    changed = [not torch.equal(v, initial[k]) for k, v in controlnet.state_dict().items() if v.is_floating_point()]
    assert sum(changed) / len(changed) > 0.5
    unet, diffusion_record = load_diffusion(ckpt / "diffusion.pt")
    autoencoder = load_autoencoder(ckpt / "autoencoder.pt")
    sampler = LatentDiffusionSampler(autoencoder, unet, diffusion_record, "rflow", 5, controlnet=controlnet)
    condition = torch.zeros(2, *diffusion_record["image_size"])
    condition[0, 8:20, 8:20, 8:20] = 1
    conditioned, unconditional = sampler.sample([3], condition)[0], sampler.sample([3])[0]
    assert conditioned.shape == tuple(diffusion_record["image_size"]) and conditioned.dtype == np.int16
    assert np.abs(conditioned.astype(int) - unconditional).mean() > 0, "the ControlNet steers the RFlow sampler"


def test_bfloat16_autocast_sampling_stays_close_to_float32(trained):
    unet, record = load_diffusion(trained.dir / "diffusion.pt")
    autoencoder = load_autoencoder(trained.dir / "autoencoder.pt")
    full = LatentDiffusionSampler(autoencoder, unet, record, "ddim", 5).sample([2])[0].astype(int)
    half = LatentDiffusionSampler(autoencoder, unet, record, "ddim", 5, precision="bfloat16").sample([2])[0].astype(int)
    difference = np.abs(half - full)
    assert 0 < difference.mean() < 40, "autocast ran (the volumes differ) and stays close"
    with pytest.raises(ValueError, match="precision"):
        LatentDiffusionSampler(autoencoder, unet, record, "ddim", 5, precision="float8")


def test_flop_counter_counts_a_convolution_exactly():
    conv = torch.nn.Conv3d(4, 6, kernel_size=3, padding=1)
    x = torch.randn(2, 4, 5, 5, 5)
    assert count_flops(lambda: conv(x)) == 2 * 4 * 6 * 27 * 2 * 5**3, "a multiply-add counts two"


def test_unet_step_flops_scale_with_the_batch():
    config = Configuration("tiny", ["demo.json"], dict(TINY))
    one, two = unet_step_flops(config, 1), unet_step_flops(config, 2)
    assert one > 1e7 and two == 2 * one


def test_memory_estimate_tracks_live_tensors():
    def step(_):
        a = torch.empty(2**18)  # 1 MiB
        b = torch.empty(2**19)  # 2 MiB while a is alive
        del a, b
        c = torch.empty(2**18)  # 1 MiB after both are freed
        return c

    held = torch.empty(2**18)
    assert estimate(Work(lambda _: held, step, lambda s: [s], warmup=False)).peak_gib * 2**10 == pytest.approx(4.0)


def test_estimates_keep_norms_and_softmax_in_float32_under_amp_as_cuda_does():
    conv, norm = torch.nn.Conv3d(4, 4, 1), torch.nn.GroupNorm(2, 4)
    seen = {}

    def step(x):
        with mixed_precision(torch.float16, "cpu"):
            y = conv(x)
            seen.update(conv=y.dtype, norm=norm(y).dtype, softmax=y.softmax(1).dtype)
            checkpointed = torch.utils.checkpoint.checkpoint(lambda t: norm(conv(t)), x, use_reentrant=False)
        checkpointed.float().sum().backward()  # the recomputation must see the forward pass's dtypes

    estimate(Work(lambda _: torch.randn((1, 4, 4, 4, 4), requires_grad=True), step, lambda x: [x], warmup=False))
    assert seen == {"conv": torch.float16, "norm": torch.float32, "softmax": torch.float32}
    with mixed_precision(torch.float16, "cpu"):
        assert norm(conv(torch.randn((1, 4, 2, 2, 2)))).dtype == torch.float16, "outside estimates, CPU autocast's own"


#: TINY's networks (one block per level) on highres.json's grid and patches, so that the budget's estimates take seconds.
HIGHRES_TINY = {
    **{k: TINY[k] for k in ("autoencoder_channels", "autoencoder_norm_num_groups", "discriminator_channels")},
    **{k: TINY[k] for k in ("diffusion_channels", "diffusion_norm_num_groups", "controlnet_embedding_channels")},
    "diffusion_attention_levels": [False, False, True],
    "diffusion_num_head_channels": [0, 0, 16],
    "autoencoder_num_res_blocks": 1,
    "diffusion_num_res_blocks": 1,
}

#: Made-up reference rates (TFLOP/s), so that predicted seconds can be checked against the FLOPs.
RATES = Rates(
    "test GPU",
    "test",
    {
        "unet_step float32": 10.0,
        "decode float32": 20.0,
        "decode bfloat16": 40.0,
        **{f"training {s}": 30.0 for s in STAGES},
    },
    {"float32": 50.0, "bfloat16": 100.0},
)


def test_highres_budget_covers_every_stage_on_the_512_x_512_x_128_grid():
    config = Configuration("highres", ["highres.json"], HIGHRES_TINY)
    assert config.image_size == [512, 512, 128] and config.patch_size == [128, 128, 64]
    rows = budget_rows(config, 64, RATES)
    by_work = {(r["stage"], r["work"], r.get("tile")): r for r in rows}
    volume_works = [("autoencoder", "validation reconstruction"), ("diffusion", "latent encoding")]
    volume_works += [("controlnet", "latent encoding"), ("sampling", "decode"), ("sampling with tumor", "decode")]
    steps = [("autoencoder", "training iteration (128x128x64 patch)"), ("diffusion", "training iteration")]
    steps += [
        ("controlnet", "training iteration"),
        ("sampling", "U-Net step"),
        ("sampling with tumor", "U-Net + ControlNet step"),
    ]
    assert set(by_work) == {(*w, t) for w in volume_works for t in ("whole", 64)} | {(*w, None) for w in steps}
    assert {r["grid"] for r in rows} == {"512x512x128"}

    unet, decode = by_work[("sampling", "U-Net step", None)], by_work[("sampling", "decode", "whole")]
    assert unet["gflop"] * 1e9 == unet_step_flops(config) and decode["gflop"] * 1e9 == decode_flops(config)
    assert unet["predicted_seconds"] == pytest.approx(unet["gflop"] / 1e3 / 10.0)
    assert decode["seconds_at_peak"] == pytest.approx(decode["gflop"] / 1e3 / 50.0)
    assert decode["estimated_gib"] > 512 * 512 * 128 * 4 / 2**30, "at least the float32 image"
    for stage, work in volume_works:
        assert by_work[(stage, work, 64)]["estimated_gib"] < by_work[(stage, work, "whole")]["estimated_gib"]
    steered = by_work[("sampling with tumor", "U-Net + ControlNet step", None)]
    assert steered["gflop"] > unet["gflop"] and steered["estimated_gib"] > unet["estimated_gib"]
    trained = by_work[("autoencoder", "training iteration (128x128x64 patch)", None)]
    plain = estimate(autoencoder_step_work(config, 1, True, use_checkpoint=False)).peak_gib
    assert trained["precision"] == "float16" and trained["estimated_gib"] < plain, "checkpointing as configured"

    summary = {r["stage"]: r for r in summary_rows(config, rows)}
    assert list(summary) == ["autoencoder", "diffusion", "controlnet", "sampling", "sampling with tumor"]
    assert summary["autoencoder"]["target_gib"] == 24.0 and summary["sampling"]["target_gib"] == 16.0
    sampling = summary["sampling"]
    assert sampling["estimated_peak_gib_whole"] == max(unet["estimated_gib"], decode["estimated_gib"])
    assert sampling["predicted_seconds"] == pytest.approx(25 * unet["predicted_seconds"] + decode["predicted_seconds"])
    assert sampling["auto_on_target_card"] == "whole", "TINY's 8 full-resolution channels need 3 GB whole, under 8 GiB"
    assert sampling["estimated_meets_target"] == ("yes" if sampling["estimated_peak_gib_whole"] <= 16.0 else "no")
    iteration = by_work[("diffusion", "training iteration", None)]["predicted_seconds"]
    assert (
        summary["diffusion"]["predicted_seconds"] == iteration and "measured_peak_gib_whole" not in summary["diffusion"]
    )


def test_update_keeps_the_sections_it_does_not_redo_under_their_runs_header(tmp_path):
    machine = {"device": "cpu", "device_type": "cpu", "cpu_cores": 2, "torch_threads": 2, "memory_gib": 8.0}
    machine |= {"torch": "2", "load_average_1min": 0.0, "other_bundle_workflows_running": 0}
    first = {"machine": machine, "date": "day 1", "command": "run 1", "flops": {"rows": []}, "training": {"rows": []}}
    (tmp_path / "first.json").write_text(json.dumps(first))
    kept = kept_results(tmp_path / "first.json", {"training", "budget"})
    assert kept == {
        "earlier_runs": [{"machine": machine, "date": "day 1", "command": "run 1", "sections": ["flops"]}],
        "flops": {"rows": []},
    }
    second = {"machine": machine, "date": "day 2", "command": "run 2", "sections": ["training"], "training": {}, **kept}
    (tmp_path / "second.json").write_text(json.dumps(second))
    again = kept_results(tmp_path / "second.json", {"flops"})
    assert [(r["date"], r["sections"]) for r in again["earlier_runs"]] == [("day 2", ["training"])]
    flops = {"peak_tflops": {}, "rows": [], "predicted_sampling": []}
    latest = {"machine": machine, "date": "day 3", "command": "run 3", "sections": ["flops"], "flops": flops}
    page = markdown({**latest, "earlier_runs": again["earlier_runs"]})
    assert "Measured sections flops on day 3 with `run 3`." in page
    assert "Kept from an earlier run: sections training on day 2 with `run 2`." in page
    assert kept_results(tmp_path / "missing.json", set()) == {}


def test_cpu_benchmark_command_writes_its_tables(trained, phantom_dir, rflow_dir, tmp_path):
    tiny = [f"{k}={json.dumps(v)}" for k, v in TINY.items() if k not in ("batch_size", "num_workers", "val_interval")]
    args = [
        sys.executable,
        str(BUNDLE.parent / "bench" / "performance.py"),
        "--model-dir",
        str(trained.dir),
        "--other-diffusion",
        str(rflow_dir[0] / "diffusion.pt"),
    ]
    args += [
        "--reference-dir",
        str(phantom_dir),
        "--samples",
        "1",
        "--samplers",
        "ddpm-1000",
        "ddim-10",
        "rflow-5",
        "--variants",
        "float32",
        "tiled",
    ]
    args += [
        "--sizes",
        "thesis",
        "--max-batch",
        "1",
        "--train-iterations",
        "1",
        "--decode-grids",
        "128",
        "--budget-sizes",
        "thesis",
        "--budget-tile",
        "4",
        "--measure-budget",
        "--out-dir",
        str(tmp_path),
        "--device",
        "cpu",
    ]
    args += [a for pair in tiny for a in ("--override", pair)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "benchmark_cpu.json").read_text())
    page = (tmp_path / "benchmark_cpu.md").read_text()
    assert results["machine"]["device_type"] == "cpu" and results["machine"]["device"] in page

    rows = {r["sampler"]: r for r in results["sampling"]["rows"]}
    assert set(rows) == {"real vs real (reference halves)", "ddpm-1000", "ddim-10", "rflow-5"}
    assert rows["ddpm-1000"]["steps"] == 1000 and rows["rflow-5"]["steps"] == 5
    slowest = max(r["seconds_per_volume"] for r in rows.values() if "seconds_per_volume" in r)
    for row in rows.values():
        assert np.isfinite(row["fid_2p5d"]) and row["fid_2p5d"] >= 0
        if "seconds_per_volume" in row:
            assert row["speedup"] == pytest.approx(slowest / row["seconds_per_volume"])

    flops = results["flops"]
    assert {(r["size"], r["call"]) for r in flops["rows"]} == {("thesis", "unet_step"), ("thesis", "decode")}
    for row in flops["rows"]:
        assert row["fraction_of_peak"] == pytest.approx(
            row["gflop"] / 1e3 / row["seconds"] / flops["peak_tflops"]["float32"]
        )
    predicted = {(r["size"], r["sampler"]): r for r in flops["predicted_sampling"]}
    assert predicted[("thesis", "ddpm-1000")]["steps"] == 1000 and predicted[("thesis", "rflow-5")]["steps"] == 5

    measured = {r["decode_tile"]: r for r in results["decoding"]["measured"]}
    assert set(measured) == {"whole", 4} and measured[4]["max_abs_hu_difference"] <= 1
    estimated = {r["decode_tile"]: r for r in results["decoding"]["estimated"]}
    assert (
        estimated[16]["estimated_gpu_gib"]
        < estimated["whole"]["estimated_gpu_gib"]
        < estimated["whole"]["estimated_gpu_gib_explicit_attention"]
    )

    training = results["training"]["rows"]
    assert {(r["stage"], r["batch"]) for r in training} == {(s, 1) for s in ("autoencoder", "diffusion", "controlnet")}
    assert all(r["seconds_per_iteration"] > 0 and r["peak_gib"] >= r["before_gib"] for r in training)
    options = results["training"]["autoencoder_memory_options"]
    plain = next(r for r in options if not (r["amp"] or r["use_checkpoint"] or r["use_flash_attention"]))
    saving = next(r for r in options if r["amp"] and r["use_checkpoint"] and r["use_flash_attention"])
    assert saving["estimated_gpu_gib"] < plain["estimated_gpu_gib"]
    budget = results["budget"]
    assert [r["stage"] for r in budget["summary"]] == [*STAGES, "sampling", "sampling with tumor"]
    assert budget["measured_on"] == results["machine"]["device"] and budget["rates"]["source"].endswith(
        "benchmark_gpu.json"
    )
    assert all(r["measured_seconds"] > 0 and r["memory_kind"] == "process peak RSS" for r in budget["rows"])
    assert results["sections"] == ["sampling", "flops", "budget", "decoding", "training", "variants"]
    for title in (
        "Budget per stage: peak GPU memory against the targets",
        "Sampling: speed and quality per sampler",
        "FLOPs and achieved fraction of peak",
        "Tiled decoding, measured",
        "Training: seconds per iteration",
    ):
        assert title in page
