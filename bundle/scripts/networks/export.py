"""Export the trained networks for deployment as `torch.export` programs (.pt2), with a dynamic batch size.

What is exported: the autoencoder's decoder (latents -> image), the diffusion U-Net
((latents, timesteps) -> noise) and, when present, the ControlNet ((latents, timesteps, mask) ->
residuals). The sampling loop, the scheduler and the mask handling stay Python: they are loops and
arithmetic around these networks, not networks. TorchScript (and so `monai.bundle ckpt_export`)
is not used: torch 2.14 deprecates it, `torch.jit.script` fails on MONAI's attention blocks, and
ckpt_export traces a single input tensor while the U-Net takes latents and timesteps.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch.export import Dim

from scripts.data.volumes import check_writable
from scripts.networks.loading import CONTROLNET_FILE, load_autoencoder, load_controlnet, load_diffusion

logger = logging.getLogger(__name__)


class Decoder(torch.nn.Module):
    """The decoder half of an AutoencoderKL as a module of its own: scaled-back latents to a [-1, 1] image."""

    def __init__(self, autoencoder: torch.nn.Module) -> None:
        super().__init__()
        self.autoencoder = autoencoder

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.autoencoder.decode(z)


def export_networks(model_dir: str, out: str, overwrite: bool = False) -> list[Path]:
    """Write `decoder.pt2`, `unet.pt2` (and `controlnet.pt2`) for the weights in `model_dir` to `out`."""
    autoencoder = load_autoencoder(Path(model_dir) / "autoencoder.pt")
    unet, record = load_diffusion(Path(model_dir) / "diffusion.pt")
    latents = torch.zeros(2, *record["latent_shape"])
    timesteps = torch.zeros(2, dtype=torch.long)
    batch = Dim("batch", min=1, max=64)
    programs = {
        "decoder": (Decoder(autoencoder), (latents,), {"z": {0: batch}}),
        "unet": (unet, (latents, timesteps), {"x": {0: batch}, "timesteps": {0: batch}}),
    }
    if (Path(model_dir) / CONTROLNET_FILE).is_file():
        controlnet, _ = load_controlnet(Path(model_dir) / CONTROLNET_FILE)
        mask = torch.zeros(2, controlnet.controlnet_cond_embedding.conv_in.conv.in_channels, *record["image_size"])
        programs["controlnet"] = (
            controlnet,
            (latents, timesteps, mask),
            {"x": {0: batch}, "timesteps": {0: batch}, "controlnet_cond": {0: batch}},
        )
    paths = [Path(out) / f"{name}.pt2" for name in programs]
    check_writable(paths, overwrite)
    Path(out).mkdir(parents=True, exist_ok=True)
    for path, (name, (module, args, dynamic)) in zip(paths, programs.items()):
        torch.export.save(torch.export.export(module, args, dynamic_shapes=dynamic), path)
        logger.info("exported %s to %s", name, path)
    return paths
