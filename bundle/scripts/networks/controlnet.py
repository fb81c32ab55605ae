"""Tumor conditioning: a ControlNet that steers the frozen diffusion U-Net with a tumor (and lung) mask.

The conditioning mask comes in at image resolution; the ControlNet average-pools it by
`condition_pooling` (1: not at all) and its conditioning embedding downsamples the rest of the way
to the latent grid, so the pooling times 2 ** (entries of `conditioning_embedding_num_channels` - 1)
must equal the autoencoder's downsampling (the pitfall of MONAI's ControlNetLatentDiffusionInferer,
which resizes the mask first and then downsamples again). Pooling is what keeps the embedding
affordable at high resolution: its first convolutions run on every voxel of a batch of masks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.networks.nets import ControlNet, DiffusionModelUNet

from scripts.networks.checkpoint import load_checkpoint
from scripts.transforms.conditioning import CONDITION_CHANNELS


class TumorControlNet(ControlNet):
    """MONAI's ControlNet fed the conditioning mask average-pooled by `condition_pooling` (its weights are MONAI's)."""

    def __init__(self, condition_pooling: int = 1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.condition_pooling = int(condition_pooling)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, controlnet_cond: torch.Tensor, **kwargs: Any) -> Any:
        if self.condition_pooling > 1:
            controlnet_cond = F.avg_pool3d(controlnet_cond, self.condition_pooling)
        return super().forward(x, timesteps, controlnet_cond, **kwargs)


def controlnet_kwargs(
    unet_kwargs: Mapping[str, Any], embedding_channels: Sequence[int], condition_pooling: int = 1
) -> dict[str, Any]:
    """TumorControlNet arguments mirroring the U-Net's, with a conditioning embedding for the mask channels.

    `condition_pooling` enters the arguments only when it pools, so records of unpooled ControlNets stay as they were.
    """
    if int(condition_pooling) < 1:
        raise ValueError(f"controlnet_condition_pooling must be a positive integer, got {condition_pooling}")
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
    if int(condition_pooling) > 1:
        kwargs["condition_pooling"] = int(condition_pooling)
    return kwargs


def controlnet_from_unet(
    unet: DiffusionModelUNet, kwargs: Mapping[str, Any], latent_downsampling: int, init_path: str | None = None
) -> TumorControlNet:
    """A ControlNet with the U-Net's encoder weights copied in (its zero convolutions start at zero).

    With `init_path` (a trained `controlnet.pt` of the same architecture) it starts from those weights
    instead: a fine-tuning run, for instance with another learning rate or tumor loss weight.
    """
    pooling = int(kwargs.get("condition_pooling", 1))
    factor = pooling * 2 ** (len(kwargs["conditioning_embedding_num_channels"]) - 1)
    if factor != latent_downsampling:
        raise ValueError(
            f"controlnet_condition_pooling ({pooling}) and conditioning_embedding_num_channels downsample the mask "
            f"{factor}x but the autoencoder's latents are {latent_downsampling}x smaller than the image: give the "
            f"embedding {(latent_downsampling // pooling).bit_length()} entries"
        )
    controlnet = TumorControlNet(**kwargs)
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

    def __init__(self, unet: DiffusionModelUNet, controlnet: TumorControlNet, conditioning_scale: float = 1.0) -> None:
        super().__init__()
        self.unet, self.controlnet, self.conditioning_scale = unet, controlnet, conditioning_scale

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        down, mid = self.controlnet(
            x=x, timesteps=timesteps, controlnet_cond=context.to(x.dtype), conditioning_scale=self.conditioning_scale
        )
        return self.unet(
            x=x, timesteps=timesteps, down_block_additional_residuals=down, mid_block_additional_residual=mid
        )
