"""Load the bundle's workflow configs from Python, from any working directory.

`python -m monai.bundle run` runs from the bundle folder, where the configs' `%configs/...`
macros resolve. Python callers (the MONAI Label app, tests) may run elsewhere, so this loader
rewrites those macros to absolute paths and sets `bundle_root`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from monai.bundle import ConfigParser

BUNDLE_DIR = Path(__file__).resolve().parents[1]
MACRO = "%configs/"


def _absolute_macros(config: Any, bundle_dir: Path) -> Any:
    """`config` with every `%configs/...` macro pointing into `bundle_dir`."""
    if isinstance(config, dict):
        return {k: _absolute_macros(v, bundle_dir) for k, v in config.items()}
    if isinstance(config, list):
        return [_absolute_macros(v, bundle_dir) for v in config]
    if isinstance(config, str) and config.startswith(MACRO):
        return f"%{bundle_dir / 'configs'}/{config[len(MACRO) :]}"
    return config


def load_bundle_config(
    names: Sequence[str], overrides: Mapping[str, Any] | None = None, bundle_dir: Path = BUNDLE_DIR
) -> ConfigParser:
    """A parser over `configs/<name>` files of `bundle_dir` (later files overlay earlier ones), then `overrides`."""
    files = [str(bundle_dir / "configs" / name) for name in names]
    parser = ConfigParser(_absolute_macros(ConfigParser.load_config_files(files), bundle_dir))
    parser["bundle_root"] = str(bundle_dir)
    parser.update(dict(overrides or {}))
    return parser
