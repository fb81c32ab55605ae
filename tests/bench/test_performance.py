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
from configurations import Configuration
from flops import count_flops, unet_step_flops
from memory_estimate import estimate_peak_gib
from monai.engines.utils import DiffusionPrepareBatch
from monai.networks.nets import AutoencoderKL
from monai.networks.schedulers import DDPMScheduler, RFlowScheduler

from helpers import BUNDLE, TINY, run_bundle, train_in_process, training_overrides
from scripts.networks.loading import load_autoencoder, load_diffusion
from scripts.networks.schedules import controlnet_scheduler, trained_schedule, training_scheduler
from scripts.sampling.sampler import LatentDiffusionSampler, denoise, make_scheduler
from scripts.sampling.tiled_decoding import TiledDecoder
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
    latents = torch.randn((2, 3, 8, 8, 8), generator=torch.Generator().manual_seed(1))
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
    with pytest.raises(
        ValueError,
        match="train_controlnet.json trains on a DDPM-trained diffusion model; diffusion_path holds a 'rflow' one",
    ):
        controlnet_scheduler({"schedule_type": "rflow", "noise_schedule": RFLOW_SCHEDULE})
    assert controlnet_scheduler({"noise_schedule": ddpm}).num_train_timesteps == 1000


def test_rflow_training_records_its_schedule(rflow_dir):
    ckpt, initial = rflow_dir
    unet, record = load_diffusion(ckpt / "diffusion.pt")
    assert record["schedule_type"] == "rflow" and record["noise_schedule"] == RFLOW_SCHEDULE
    changed = [not torch.equal(v, initial[k]) for k, v in unet.state_dict().items() if v.is_floating_point()]
    assert sum(changed) / len(changed) > 0.9


def test_rflow_model_samples_through_the_inference_config(rflow_dir, trained, tmp_path):
    ckpt, _ = rflow_dir
    overrides = {"model_dir": str(ckpt), "output_dir": str(tmp_path), "num_samples": 2, "batch_size": 2, "seed": 1}
    run_bundle(["inference.json"], {**overrides, "sampler": "rflow", "num_inference_steps": 5})
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
    assert estimate_peak_gib(lambda: held, step, lambda s: [s], warmup=False) * 2**10 == pytest.approx(4.0)


def test_cpu_benchmark_command_writes_its_tables(trained, phantom_dir, rflow_dir, tmp_path):
    tiny = [f"{k}={json.dumps(v)}" for k, v in TINY.items() if k not in ("batch_size", "num_workers", "val_interval")]
    args = [
        sys.executable,
        str(BUNDLE.parent / "bench" / "performance.py"),
        "--model-dir",
        str(trained.dir),
        "--rflow-diffusion",
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
    for title in (
        "Sampling: speed and quality per sampler",
        "FLOPs and achieved fraction of peak",
        "Tiled decoding, measured",
        "Training: seconds per iteration",
    ):
        assert title in page
