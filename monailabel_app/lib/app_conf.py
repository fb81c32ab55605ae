"""What `--conf key value` can set when the server starts, checked once, with errors that name the key.

- `bundle_dir`: the bundle to serve (configs, `scripts` code and `models/`); default: this repository's `bundle/`.
  It must hold configs/inference.json and inference_tumor.json; `insert_tumor` is offered where it also holds
  configs/insert_tumor.json (else left out with a warning, as a task whose weights are missing).
- `model_dir`: a checkpoint folder holding autoencoder.pt, diffusion.pt (and controlnet.pt for tumors);
  default: the bundle's own choice (`models/` once trained, else the shipped `models/demo/`).
- `max_inference_steps`: the most reverse steps one request may ask for (default 200), which bounds
  how long one generation holds the server.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

#: This repository's bundle, served unless `bundle_dir` names another.
DEFAULT_BUNDLE_DIR = Path(__file__).resolve().parents[2] / "bundle"
#: Default cap on `num_inference_steps`: about a minute of sampling for the demo networks on a CPU.
DEFAULT_MAX_INFERENCE_STEPS = 200
KNOWN_KEYS = ("bundle_dir", "model_dir", "max_inference_steps")


@dataclass(frozen=True)
class AppConf:
    """The app's settings from `--conf`."""

    bundle_dir: Path
    model_dir: Path | None
    max_inference_steps: int


def bundle_dir(conf: Mapping[str, str]) -> Path:
    """The bundle folder `conf` names (or this repository's), refused unless it holds the inference configs."""
    folder = Path(conf.get("bundle_dir", DEFAULT_BUNDLE_DIR)).expanduser().resolve()
    for name in ("inference.json", "inference_tumor.json"):
        if not (folder / "configs" / name).is_file():
            raise ValueError(f"bundle_dir: {folder} holds no configs/{name}")
    return folder


def import_bundle(folder: Path) -> None:
    """Put `folder` first on sys.path, so that `import scripts` (here and in its configs) loads that bundle's code."""
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))


def app_conf(conf: Mapping[str, str]) -> AppConf:
    """Parse MONAI Label's `conf` dict (all values are strings) into `AppConf`."""
    unknown = sorted(set(conf) - set(KNOWN_KEYS) - {"server_mode"})
    if unknown:
        raise ValueError(f"unknown --conf keys {unknown}; this app knows {list(KNOWN_KEYS)}")
    model_dir = Path(conf["model_dir"]).expanduser().resolve() if "model_dir" in conf else None
    if model_dir is not None and not model_dir.is_dir():
        raise ValueError(f"model_dir: {model_dir} is not a folder")
    steps = conf.get("max_inference_steps", str(DEFAULT_MAX_INFERENCE_STEPS))
    if not str(steps).isdigit() or int(steps) < 1:
        raise ValueError(f"max_inference_steps must be a positive integer, got {steps!r}")
    return AppConf(bundle_dir(conf), model_dir, int(steps))
