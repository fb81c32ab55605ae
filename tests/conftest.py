"""Shared fixtures: tiny phantom data and tiny trained models, built once per test session with the real configs.

The plain helpers they use (BUNDLE, TINY, run_bundle, ...) live in tests/helpers; pytest.ini puts bundle/ and tests/
on sys.path.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from helpers import train_in_process, training_overrides


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory) -> Path:
    """Four 32-voxel phantoms with their datalist (two train, one validation, one test)."""
    from scripts.phantoms.thorax import write_phantoms

    root = tmp_path_factory.mktemp("phantoms")
    write_phantoms(str(root), n=4, size=32, seed=0)
    return root


@pytest.fixture(scope="session")
def trained(tmp_path_factory, phantom_dir) -> SimpleNamespace:
    """Tiny models trained on the phantoms: autoencoder (two epochs, the second adversarial), diffusion and ControlNet
    (three), structure segmenter (two).

    Holds `dir` (the checkpoint folder) and the networks' weights from before training.
    """
    ckpt = tmp_path_factory.mktemp("models")
    common = training_overrides(phantom_dir, ckpt)
    autoencoder = train_in_process(
        ["train_autoencoder.json", "demo.json"],
        "autoencoder",
        {**common, "max_epochs": 2, "adversarial_warmup_epochs": 1},
    )
    diffusion = train_in_process(["train_diffusion.json", "demo.json"], "network", {**common, "max_epochs": 3})
    controlnet = train_in_process(["train_controlnet.json", "demo.json"], "controlnet", {**common, "max_epochs": 3})
    segmentation = train_in_process(
        ["train_segmentation.json", "demo.json"], "network", {**common, "max_epochs": 2, "segmentation_init_filters": 8}
    )
    return SimpleNamespace(
        dir=ckpt,
        initial_autoencoder=autoencoder,
        initial_diffusion=diffusion,
        initial_controlnet=controlnet,
        initial_segmentation=segmentation,
    )
