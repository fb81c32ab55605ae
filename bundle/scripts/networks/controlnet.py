"""Tumor conditioning: a ControlNet that steers the frozen diffusion U-Net with a tumor (and lung) mask.

The conditioning mask stays at image resolution and the ControlNet's conditioning embedding
downsamples it to the latent grid: its `conditioning_embedding_num_channels` must have one more
entry than the autoencoder has downsamplings, so the two grids agree (the pitfall of MONAI's
ControlNetLatentDiffusionInferer, which resizes the mask first and then downsamples again).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from monai.networks.nets import ControlNet, DiffusionModelUNet

from scripts.networks.checkpoint import load_checkpoint
from scripts.transforms.conditioning import CONDITION_CHANNELS


def controlnet_kwargs(unet_kwargs: Mapping[str, Any], embedding_channels: Sequence[int]) -> dict[str, Any]:
    """ControlNet arguments mirroring the U-Net's, with a conditioning embedding for the mask channels."""
    shared = (
        "spatial_dims",
        "in_channels",
        "channels",
        "num_res_blocks",
        "norm_num_groups",
        "attention_levels",
        "num_head_channels",
        "use_flash_attention",
    )
    kwargs = {k: unet_kwargs[k] for k in shared if k in unet_kwargs}
    kwargs.update(
        conditioning_embedding_in_channels=len(CONDITION_CHANNELS),
        conditioning_embedding_num_channels=list(embedding_channels),
    )
    return kwargs


def controlnet_from_unet(
    unet: DiffusionModelUNet, kwargs: Mapping[str, Any], latent_downsampling: int, init_path: str | None = None
) -> ControlNet:
    """A ControlNet with the U-Net's encoder weights copied in (its zero convolutions start at zero).

    With `init_path` (a trained `controlnet.pt` of the same architecture) it starts from those weights
    instead: a fine-tuning run, for instance with another learning rate or tumor loss weight.
    """
    factor = 2 ** (len(kwargs["conditioning_embedding_num_channels"]) - 1)
    if factor != latent_downsampling:
        raise ValueError(
            f"conditioning_embedding_num_channels downsamples the mask {factor}x but the autoencoder's latents are "
            f"{latent_downsampling}x smaller than the image: give it {latent_downsampling.bit_length()} entries"
        )
    controlnet = ControlNet(**kwargs)
    if init_path is None:
        controlnet.load_state_dict(unet.state_dict(), strict=False)
    else:
        checkpoint = load_checkpoint(init_path, ("controlnet", "controlnet_record"))
        if checkpoint["controlnet_record"]["network"] != dict(kwargs):
            raise ValueError(
                f"controlnet_init_path {init_path} holds another ControlNet architecture than this configuration builds"
            )
        controlnet.load_state_dict(checkpoint["controlnet"])
    return controlnet.to(next(unet.parameters()).device)


def latent_downsampling(diffusion_record: Mapping[str, Any]) -> int:
    """How many times smaller per side the latents are than the image, from a diffusion record."""
    return int(diffusion_record["image_size"][0]) // int(diffusion_record["latent_shape"][1])


class ControlledUNet(torch.nn.Module):
    """The diffusion U-Net steered by a ControlNet: predicts noise from (latents, timesteps, conditioning mask).

    The mask comes in as `context`, the name under which MONAI's DiffusionInferer passes a
    condition, so that inferer and SupervisedTrainer drive this module unchanged.
    """

    def __init__(self, unet: DiffusionModelUNet, controlnet: ControlNet, conditioning_scale: float = 1.0) -> None:
        super().__init__()
        self.unet, self.controlnet, self.conditioning_scale = unet, controlnet, conditioning_scale

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        down, mid = self.controlnet(
            x=x, timesteps=timesteps, controlnet_cond=context.to(x.dtype), conditioning_scale=self.conditioning_scale
        )
        return self.unet(
            x=x, timesteps=timesteps, down_block_additional_residuals=down, mid_block_additional_residual=mid
        )
