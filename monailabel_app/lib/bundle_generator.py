"""The bundle's generator, built once per task from the bundle's own inference configs and weights.

Nothing about the networks lives in the app: `configs/inference.json` (or `inference_tumor.json`,
`insert_tumor.json`) is parsed with `scripts.bundle_config.load_bundle_config`, and its `generator` loads the weights
from the config's `model_dir` (the bundle's `models/`, else `models/demo/`) or from `--conf model_dir`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scripts.bundle_config import load_bundle_config
from scripts.sampling.sampler import LatentDiffusionSampler
from scripts.sampling.structures import Segmenter

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BundleGenerator:
    """A loaded generator, the structure segmenter (None where the model folder has none), the config's defaults."""

    generator: LatentDiffusionSampler
    defaults: dict[str, Any]
    segmenter: Segmenter | None = None


def load_segmenter(parser) -> Segmenter | None:
    """The config's structure segmenter when its weights exist; without them the tasks return the CT alone."""
    if "segmenter" not in parser:
        return None
    path = Path(parser.get_parsed_content("segmentation_path"))
    if not path.is_file():
        logger.warning("no segmentation weights at %s: results carry no structures", path)
        return None
    return parser.get_parsed_content("segmenter")


def load_generator(
    config: str, bundle_dir: Path, model_dir: Path | None, default_keys: tuple[str, ...]
) -> BundleGenerator:
    """Parse `configs/<config>` of `bundle_dir` (with `model_dir` if given); load its `generator` and `segmenter`."""
    parser = load_bundle_config([config], {"model_dir": str(model_dir)} if model_dir else None, bundle_dir=bundle_dir)
    generator = parser.get_parsed_content("generator")
    defaults = {key: parser.get_parsed_content(key) for key in default_keys}
    return BundleGenerator(generator, defaults, load_segmenter(parser))
