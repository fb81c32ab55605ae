"""The network configurations the performance benchmarks measure: the demo, thesis and high-resolution sizes, read from the bundle's configs.

A configuration is the training configs with overlays (`demo.json` for the demo size, none for the
thesis, `highres.json` for 512 x 512 x 128 and, on a 256^3 grid, for `highres-256`) and optional
overrides (tests shrink the networks with them). Untrained networks of a
configuration, and the record a trained diffusion checkpoint would carry, come from the same keys
the training workflows read, so the benchmark measures what training builds.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser
from monai.networks.nets import AutoencoderKL, DiffusionModelUNet

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bundle"))

from scripts.bundle_config import load_bundle_config  # noqa: E402
from scripts.networks.controlnet import controlnet_kwargs  # noqa: E402
from scripts.networks.loading import INFERENCE_OPTIONS  # noqa: E402
from scripts.transforms.patches import patch_shape  # noqa: E402

#: Overlays of each benchmarked size.
SIZES = {"demo": ["demo.json"], "thesis": [], "highres": ["highres.json"], "highres-256": ["highres.json"]}

#: Overrides of the sizes that are another size's networks on another grid (under any given overrides).
SIZE_OVERRIDES = {"highres-256": {"grid_size": 256}}

#: Overlays that switch the diffusion stage to each training schedule.
SCHEDULE_OVERLAYS = {"ddpm": [], "rflow": ["rflow.json"]}


@dataclass
class Configuration:
    """One benchmarked configuration: a size name, its overlays and overrides."""

    name: str
    overlays: list[str]
    overrides: dict[str, Any] = field(default_factory=dict)

    def parser(self, workflow: str, schedule_type: str = "ddpm") -> ConfigParser:
        """The parsed config of `workflow` (e.g. `train_diffusion.json`) at this size; no weights are loaded."""
        overlays = self.overlays + (SCHEDULE_OVERLAYS[schedule_type] if workflow == "train_diffusion.json" else [])
        parser = load_bundle_config([workflow, *overlays], self.overrides)
        if workflow != "train_autoencoder.json":  # the later stages read it from the trained autoencoder's checkpoint
            parser["latent_channels"] = self.autoencoder_kwargs["latent_channels"]
        return parser

    @cached_property
    def autoencoder_kwargs(self) -> dict[str, Any]:
        """AutoencoderKL arguments of this configuration."""
        return self.parser("train_autoencoder.json").get_parsed_content("autoencoder_kwargs")

    @cached_property
    def diffusion_kwargs(self) -> dict[str, Any]:
        """DiffusionModelUNet arguments of this configuration."""
        return self.parser("train_diffusion.json").get_parsed_content("diffusion_kwargs")

    @cached_property
    def controlnet_kwargs(self) -> dict[str, Any]:
        """TumorControlNet arguments of this configuration."""
        parser = self.parser("train_controlnet.json")
        embedding, pooling = (
            parser.get_parsed_content(k) for k in ("controlnet_embedding_channels", "controlnet_condition_pooling")
        )
        return controlnet_kwargs(self.diffusion_kwargs, embedding, pooling)

    @cached_property
    def image_size(self) -> list[int]:
        """The working grid of this configuration."""
        return list(self.parser("train_diffusion.json").get_parsed_content("image_size"))

    @property
    def grid(self) -> str:
        """The working grid as a label: `512x512x128`."""
        return "x".join(str(n) for n in self.image_size)

    @cached_property
    def patch_size(self) -> list[int]:
        """The autoencoder's training crop: `patch_size` of train_autoencoder.json, or the whole grid where it is null."""
        patch = self.parser("train_autoencoder.json").get_parsed_content("patch_size")
        return self.image_size if patch is None else patch_shape(patch)

    @cached_property
    def latent_shape(self) -> list[int]:
        """Latent (channels, X, Y, Z) of one image: the autoencoder halves the grid at every level but the first."""
        factor = 2 ** (len(self.autoencoder_kwargs["channels"]) - 1)
        return [self.autoencoder_kwargs["latent_channels"], *(s // factor for s in self.image_size)]

    def record(self, schedule_type: str = "ddpm") -> dict[str, Any]:
        """The diffusion record untrained networks of this configuration would carry (scale factor 1)."""
        parser = self.parser("train_diffusion.json", schedule_type)
        return {
            "network": self.diffusion_kwargs,
            "scale_factor": 1.0,
            "latent_shape": self.latent_shape,
            "noise_schedule": parser.get_parsed_content("noise_schedule"),
            "schedule_type": schedule_type,
            "image_size": self.image_size,
            "image_spacing_mm": parser.get_parsed_content("image_spacing_mm"),
            "hu_window": parser.get_parsed_content("hu_window"),
        }

    def untrained(self, device: torch.device) -> tuple[AutoencoderKL, DiffusionModelUNet]:
        """Randomly initialised autoencoder and diffusion U-Net of this configuration, built as the sampler loads trained ones, on `device`."""
        torch.manual_seed(0)
        autoencoder = AutoencoderKL(**{**self.autoencoder_kwargs, **INFERENCE_OPTIONS}).to(device).eval()
        unet = DiffusionModelUNet(**{**self.diffusion_kwargs, **INFERENCE_OPTIONS}).to(device).eval()
        return autoencoder, unet


def configurations(names: list[str], overrides: dict[str, Any]) -> list[Configuration]:
    """The configurations named in `names` (keys of SIZES), each with `overrides`; an unknown name is refused."""
    unknown = sorted(set(names) - set(SIZES))
    if unknown:
        raise ValueError(f"--sizes must be among {sorted(SIZES)}, got {unknown}")
    return [Configuration(n, list(SIZES[n]), {**SIZE_OVERRIDES.get(n, {}), **overrides}) for n in names]
