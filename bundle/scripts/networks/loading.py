"""Rebuild trained networks from their self-describing weight files (see `scripts.networks.checkpoint`).

Loaded networks compute attention with torch's `scaled_dot_product_attention` (memory-efficient
kernels), whatever kernel they were trained with: the weights are the same and the results equal up
to float rounding, while the explicit attention matrix of the thesis decoder's global attention
would take 4 GiB at 128^3 and 275 GiB at 256^3.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import NamedTuple

import torch
from monai.networks.nets import AutoencoderKL, DiffusionModelUNet, SegResNet

from scripts.networks.checkpoint import load_checkpoint
from scripts.networks.controlnet import TumorControlNet

logger = logging.getLogger(__name__)

#: Names of the weight files a model folder holds.
AUTOENCODER_FILE, DIFFUSION_FILE, CONTROLNET_FILE = "autoencoder.pt", "diffusion.pt", "controlnet.pt"
SEGMENTATION_FILE = "segmentation.pt"

#: The weight files tumor-conditioned sampling needs.
TUMOR_MODEL_FILES = (AUTOENCODER_FILE, DIFFUSION_FILE, CONTROLNET_FILE)

#: Constructor options of every loaded network: the memory-efficient attention kernel.
INFERENCE_OPTIONS = {"use_flash_attention": True}


class LoadedNetwork(NamedTuple):
    """A network rebuilt from its weight file, with the record that describes it."""

    network: torch.nn.Module
    record: dict


def _frozen(network: torch.nn.Module, device: torch.device | str) -> torch.nn.Module:
    network.to(device).eval()
    for p in network.parameters():
        p.requires_grad_(False)
    return network


def load_autoencoder(path: str | Path, device: torch.device | str = "cpu") -> AutoencoderKL:
    """The AutoencoderKL stored at `path` (keys `autoencoder`, `autoencoder_record`), frozen, in eval mode."""
    checkpoint = load_checkpoint(path, ("autoencoder", "autoencoder_record"))
    network = AutoencoderKL(**{**checkpoint["autoencoder_record"]["network"], **INFERENCE_OPTIONS})
    network.load_state_dict(checkpoint["autoencoder"])
    return _frozen(network, device)


def trainable_autoencoder(
    kwargs: dict, init_path: str | Path | None = None, train_encoder: bool = True, device: torch.device | str = "cpu"
) -> AutoencoderKL:
    """A new AutoencoderKL from `kwargs`, started from the weights at `init_path` when one is given.

    `train_encoder=False` freezes the encoder so only the decoder learns: the latents, and the
    diffusion U-Net and ControlNet trained on them, stay valid (a decoder fine-tune).
    """
    network = AutoencoderKL(**kwargs)
    if init_path:
        weights = load_checkpoint(init_path, ("autoencoder",))["autoencoder"]
        try:
            network.load_state_dict(weights)
        except RuntimeError as e:
            raise ValueError(
                f"autoencoder_init_path {init_path}: its weights do not fit autoencoder_kwargs {kwargs}: {e}"
            ) from e
    if not train_encoder:
        if not init_path:
            raise ValueError(
                "train_encoder=false freezes a random encoder: set autoencoder_init_path to trained weights"
            )
        for module in (network.encoder, network.quant_conv_mu, network.quant_conv_log_sigma):
            module.requires_grad_(False)
    return network.to(device)


def load_diffusion(path: str | Path, device: torch.device | str = "cpu") -> LoadedNetwork:
    """The diffusion U-Net stored at `path`, frozen, and its record (scale factor, latent shape, schedule, grid)."""
    checkpoint = load_checkpoint(path, ("diffusion", "diffusion_record"))
    record = checkpoint["diffusion_record"]
    network = DiffusionModelUNet(**{**record["network"], **INFERENCE_OPTIONS})
    network.load_state_dict(checkpoint["diffusion"])
    return LoadedNetwork(_frozen(network, device), record)


def load_controlnet(path: str | Path, device: torch.device | str = "cpu") -> LoadedNetwork:
    """The tumor ControlNet stored at `path`, frozen, and its record (conditioning channels, training settings)."""
    checkpoint = load_checkpoint(path, ("controlnet", "controlnet_record"))
    record = checkpoint["controlnet_record"]
    network = TumorControlNet(**{**record["network"], **INFERENCE_OPTIONS})
    network.load_state_dict(checkpoint["controlnet"])
    return LoadedNetwork(_frozen(network, device), record)


def load_segmentation(path: str | Path, device: torch.device | str = "cpu") -> LoadedNetwork:
    """The structure segmenter stored at `path` (a SegResNet), frozen, and its record (training crop, working grid)."""
    checkpoint = load_checkpoint(path, ("segmentation", "segmentation_record"))
    record = checkpoint["segmentation_record"]
    network = SegResNet(**record["network"])
    network.load_state_dict(checkpoint["segmentation"])
    return LoadedNetwork(_frozen(network, device), record)


def trainable_segmenter(
    kwargs: dict, init_path: str | Path | None = None, device: torch.device | str = "cpu"
) -> SegResNet:
    """A new SegResNet from `kwargs`, started from the segmenter at `init_path` when one is given (a fine-tune)."""
    network = SegResNet(**kwargs)
    if init_path:
        checkpoint = load_checkpoint(init_path, ("segmentation", "segmentation_record"))
        if checkpoint["segmentation_record"]["network"] != dict(kwargs):
            raise ValueError(
                f"segmentation_init_path {init_path} holds another segmenter architecture than segmentation_kwargs "
                f"{kwargs}: {checkpoint['segmentation_record']['network']}"
            )
        network.load_state_dict(checkpoint["segmentation"])
    return network.to(device)


def default_model_dir(bundle_root: str | Path, files: tuple[str, ...] = (AUTOENCODER_FILE, DIFFUSION_FILE)) -> Path:
    """`models/` once it holds all of `files` (weights you trained), else the shipped `models/demo/`."""
    trained = Path(bundle_root) / "models"
    chosen = trained if all((trained / f).is_file() for f in files) else trained / "demo"
    logger.info("using the weights in %s", chosen)
    return chosen
