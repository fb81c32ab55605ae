"""Plain helpers for the tests: the bundle folder, the TINY overrides, and running the bundle's workflows.

`corrupt` (real phantoms on the working grid and their failure kinds), `sitk_reference` (an independent DICOM
reader) and `dicom3tools` (its validators) are the package's other modules. The pytest fixtures built from these live in tests/conftest.py.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import torch
from monai.bundle import ConfigWorkflow

BUNDLE = Path(__file__).resolve().parents[2] / "bundle"

#: Overrides that shrink the demo configuration so each stage trains in seconds on a CPU: whole 32^3 volumes (patches
#: as large as the grid; the command line cannot pass a null), three latent channels and unpooled ControlNet masks.
#: tests/bundle/test_highres.py and the resume test train on smaller patches.
TINY = {
    "grid_size": 32,
    "autoencoder_channels": [8, 16, 16],
    "autoencoder_latent_channels": 3,
    "autoencoder_norm_num_groups": 8,
    "autoencoder_attention_levels": [False, False, False],
    "patch_size": 32,
    "discriminator_channels": 8,
    "diffusion_channels": [16, 32, 32],
    "diffusion_norm_num_groups": 8,
    "diffusion_num_head_channels": [0, 16, 16],
    "controlnet_embedding_channels": [8, 16, 16],
    "controlnet_condition_pooling": 1,
    "batch_size": 2,
    "num_workers": 0,
    "val_interval": 1,
}


def training_overrides(phantom_dir: Path, folder: Path) -> dict:
    """TINY networks trained on `phantom_dir`, with checkpoints, logs and the cache in `folder`."""
    return {
        **TINY,
        "dataset_dir": str(phantom_dir),
        "ckpt_dir": str(folder),
        "log_dir": str(folder / "logs"),
        "cache_dir": str(folder / "cache"),
    }


def run_bundle(
    configs: list[str], overrides: dict, cwd: Path = BUNDLE, check: bool = True
) -> subprocess.CompletedProcess:
    """Run `python -m monai.bundle run` from the bundle folder, as a user would; returns the finished process."""
    config_file = "[" + ",".join(f"'configs/{c}'" for c in configs) + "]"
    args = [sys.executable, "-m", "monai.bundle", "run", "--config_file", config_file]
    for key, value in overrides.items():
        args += [f"--{key}", repr(value) if isinstance(value, (list, bool)) else str(value)]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}")
    return done


def train_in_process(configs: list[str], network_id: str, overrides: dict) -> dict[str, torch.Tensor]:
    """Run a training workflow in this process; returns the network's weights from before training."""
    cwd = os.getcwd()
    os.chdir(BUNDLE)  # the configs import configs/common.json relative to the bundle folder
    try:
        workflow = ConfigWorkflow(config_file=[f"configs/{c}" for c in configs], workflow_type=None, **overrides)
        workflow.initialize()
        initial = copy.deepcopy(workflow.parser.get_parsed_content(network_id).state_dict())
        workflow.run()
        workflow.finalize()
    finally:
        os.chdir(cwd)
    return initial
