"""Tumour conditioning: a ControlNet that steers the frozen diffusion U-Net with a tumour (and lung) mask.

The conditioning mask stays at image resolution and the ControlNet's conditioning embedding
downsamples it to the latent grid: its `conditioning_embedding_num_channels` must have one more
entry than the autoencoder has downsamplings, so the two grids agree (the pitfall of MONAI's
ControlNetLatentDiffusionInferer, which resizes the mask first and then downsamples again).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.engines.utils import DiffusionPrepareBatch
from monai.networks.nets import ControlNet, DiffusionModelUNet
from monai.transforms import MapTransform, RandomizableTransform

from scripts.checkpoint import load_checkpoint
from scripts.labels import tumour_channel

#: Channels of the conditioning mask, in order.
CONDITION_CHANNELS = ("tumour", "lungs")


def controlnet_kwargs(unet_kwargs: Mapping[str, Any], embedding_channels: Sequence[int]) -> dict[str, Any]:
    """ControlNet arguments mirroring the U-Net's, with a conditioning embedding for the mask channels."""
    shared = ("spatial_dims", "in_channels", "channels", "num_res_blocks", "norm_num_groups", "attention_levels", "num_head_channels")
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
    instead: a fine-tuning run, for instance with another learning rate or tumour loss weight.
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
            raise ValueError(f"controlnet_init_path {init_path} holds another ControlNet architecture than this configuration builds")
        controlnet.load_state_dict(checkpoint["controlnet"])
    return controlnet.to(next(unet.parameters()).device)


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
        return self.unet(x=x, timesteps=timesteps, down_block_additional_residuals=down, mid_block_additional_residual=mid)


class ConditioningMaskd(RandomizableTransform, MapTransform):
    """Build the (tumour, lungs) conditioning mask from the label channels; drop the lungs with `lung_dropout`.

    `masks` holds the channels of `mask_channels` in configs/common.json; `tumour` is the union
    of `gtv_1` and `gtv_other`. Dropping the lungs at random teaches the ControlNet to work from a
    tumour alone, which is what most users will give.
    """

    def __init__(
        self,
        channel_names: Sequence[str],
        lung_dropout: float = 0.5,
        masks_key: str = "masks",
        output_key: str = "condition",
    ) -> None:
        MapTransform.__init__(self, masks_key)
        RandomizableTransform.__init__(self, prob=lung_dropout)
        self.channel_names = list(channel_names)
        self.lungs = self.channel_names.index("lungs")
        self.masks_key, self.output_key = masks_key, output_key

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        masks = torch.as_tensor(d[self.masks_key])
        self.randomize(None)
        lungs = torch.zeros_like(masks[self.lungs]) if self._do_transform else masks[self.lungs]
        d[self.output_key] = torch.cat([tumour_channel(masks, self.channel_names), lungs[None]]).float()
        return d


class TumourWeightedPrepareBatch(DiffusionPrepareBatch):
    """DiffusionPrepareBatch whose target also carries a per-voxel loss weight, `tumour_weight` inside the tumour.

    The target is the noise with the weight map appended as a last channel; `weighted_mse`
    splits them again.
    """

    def __init__(self, num_train_timesteps: int, tumour_weight: float = 1.0, condition_name: str = "condition") -> None:
        super().__init__(num_train_timesteps, condition_name=condition_name)
        if tumour_weight < 1.0:
            raise ValueError(f"tumour_weight must be >= 1, got {tumour_weight}")
        self.tumour_weight = tumour_weight

    def __call__(self, batchdata, device=None, non_blocking: bool = False, **kwargs):
        images, noise, args, infer_kwargs = super().__call__(batchdata, device, non_blocking, **kwargs)
        tumour = infer_kwargs["condition"][:, :1]
        latent_tumour = F.adaptive_max_pool3d(tumour.float(), images.shape[2:])
        weight = 1.0 + (self.tumour_weight - 1.0) * latent_tumour
        return images, torch.cat([noise, weight.to(noise.dtype)], dim=1), args, infer_kwargs


def weighted_mse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MSE between `prediction` and the noise in `target[:, :-1]`, weighted per voxel by `target[:, -1:]`."""
    noise, weight = target[:, :-1], target[:, -1:]
    return (weight * (prediction.float() - noise.float()) ** 2).sum() / (weight.sum() * noise.shape[1])
