"""Every training stage under torchrun with two processes (gloo on this CPU): replicas agree, only rank 0 writes."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import BUNDLE, training_overrides

TORCHRUN = str(Path(sys.executable).with_name("torchrun"))


def torchrun(config: str, overrides: dict) -> str:
    """Run one training config with multi_gpu_train.json on two CPU processes; returns the combined log."""
    files = f"['configs/{config}','configs/demo.json','configs/multi_gpu_train.json']"
    args = [TORCHRUN, "--nproc_per_node=2", "-m", "monai.bundle", "run", "--config_file", files]
    for key, value in overrides.items():
        args += [f"--{key}", repr(value) if isinstance(value, list) else str(value)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(args, cwd=BUNDLE, env=env, capture_output=True, text=True, timeout=600)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-4000:]
    return log


@pytest.fixture(scope="module")
def runs(tmp_path_factory, phantom_dir):
    """Logs of the three stages trained one after the other, one epoch each, into one checkpoint folder."""
    ckpt = tmp_path_factory.mktemp("ddp")
    overrides = {
        **training_overrides(phantom_dir, ckpt),
        "batch_size": 1,
        "max_epochs": 1,
        "adversarial_warmup_epochs": 0,
    }
    logs = {stage: torchrun(f"train_{stage}.json", overrides) for stage in ("autoencoder", "diffusion", "controlnet")}
    return ckpt, logs


@pytest.mark.parametrize("stage", ["autoencoder", "diffusion", "controlnet"])
def test_both_ranks_train_and_end_with_identical_weights(runs, stage):
    _, logs = runs
    log = logs[stage]
    assert "rank 0 of 2 on cpu (gloo)" in log and "rank 1 of 2 on cpu (gloo)" in log
    checks = 2 if stage == "autoencoder" else 1  # autoencoder and discriminator
    assert log.count("weights identical on all 2 ranks") == 2 * checks, "every rank compared its replicas with rank 0's"


@pytest.mark.parametrize("stage", ["autoencoder", "diffusion", "controlnet"])
def test_only_rank_zero_writes_checkpoints_and_logs(runs, stage):
    ckpt, logs = runs
    assert logs[stage].count("saved final checkpoint") == 1
    assert len(re.findall(r"Saved checkpoint at epoch: 1", logs[stage])) == 1
    assert {p.name for p in ckpt.glob(f"{stage}*.pt")} == {f"{stage}.pt", f"{stage}_checkpoint_epoch=1.pt"}
    torch.load(ckpt / f"{stage}.pt", weights_only=True)


def test_scale_factor_is_averaged_over_the_ranks(runs):
    ckpt, logs = runs
    per_rank = [float(v) for v in re.findall(r"scale factor ([0-9.]+) from", logs["diffusion"])]
    stored = torch.load(ckpt / "diffusion.pt", weights_only=True)["diffusion_record"]["scale_factor"]
    assert len(per_rank) == 2 and per_rank[0] != per_rank[1], "each rank estimates it from its own latent draw"
    assert abs(stored - sum(per_rank) / 2) < 1e-3


def test_tensorboard_logs_come_from_one_process(runs):
    ckpt, _ = runs
    processes = {p.name.split(".")[-2] for p in (ckpt / "logs").glob("events.out.tfevents.*")}
    assert len(processes) == 3, "one writing process per stage"
