"""The contrastive pair of MAISI's ControlNet recipe: the ControlNet, not the U-Net, must be what draws the tumor.

Each training step predicts twice, with the (tumor, lungs) mask and with the tumor relabelled as lung
(`without_tumor`, the unconditional branch of tumor guidance). Besides the tumor-weighted MSE, the loss
rewards the two predictions for differing inside the tumor (their mean absolute difference, counted up to
`margin`) and pulls the tumor-free prediction to the target outside the tumor and its one-voxel rim, so that
removing the tumor from the mask changes the tumor and nothing else.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from scripts.training.losses import weighted_mse
from scripts.transforms.conditioning import without_tumor


class TumorContrastivePair(torch.nn.Module):
    """A ControlledUNet that, while training, also predicts with the tumor removed: both as one output of 2C channels.

    In evaluation mode it is the ControlledUNet itself. Both predictions run as one batch, so
    DistributedDataParallel sees one forward pass per step.
    """

    def __init__(self, controlled: torch.nn.Module) -> None:
        super().__init__()
        self.controlled = controlled

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self.controlled(x, timesteps=timesteps, context=context)
        both = self.controlled(
            torch.cat([x, x]),
            timesteps=torch.cat([timesteps, timesteps]),
            context=torch.cat([context, without_tumor(context)]),
        )
        return torch.cat(both.chunk(2), dim=1)


def contrastive_network(network: torch.nn.Module, contrastive_loss_weight: float) -> torch.nn.Module:
    """The module the ControlNet trainer steps: `network` in a TumorContrastivePair when the contrastive term is on."""
    if contrastive_loss_weight < 0:
        raise ValueError(f"contrastive_loss_weight must be >= 0, got {contrastive_loss_weight}")
    return TumorContrastivePair(network) if contrastive_loss_weight > 0 else network


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `values` (B, C, ...) over the voxels where the one-channel `mask` is 1 (0 when it is empty)."""
    mask = mask.expand_as(values)
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


class TumorContrastiveLoss:
    """Tumor-weighted MSE plus `weight` x (background term - contrastive term, counted up to `margin`).

    Takes the 2C-channel output of `TumorContrastivePair` and the target of `TumorWeightedPrepareBatch`
    (noise or velocity, weight map, latent tumor). With `weight` 0 it is `weighted_mse` on a C-channel output.
    """

    def __init__(self, weight: float = 0.0, margin: float = 2.0) -> None:
        if weight < 0 or margin <= 0:
            raise ValueError(f"contrastive_loss_weight must be >= 0 and contrastive_margin > 0, got {weight}, {margin}")
        self.weight, self.margin = float(weight), float(margin)

    def __call__(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.weight == 0:
            return weighted_mse(prediction, target)
        channels = target.shape[1] - 2
        if prediction.shape[1] != 2 * channels:
            raise ValueError(
                f"a contrastive_loss_weight above 0 needs TumorContrastivePair's {2 * channels}-channel predictions, "
                f"got {prediction.shape[1]} channels"
            )
        with_tumor, removed = prediction.float().split(channels, dim=1)
        truth, tumor = target[:, :channels].float(), target[:, channels + 1 :].float()
        background = 1.0 - F.max_pool3d(tumor, kernel_size=3, stride=1, padding=1)
        difference = _masked_mean((with_tumor - removed).abs(), tumor)
        drift = _masked_mean((removed - truth).abs(), background)
        return weighted_mse(with_tumor, target) + self.weight * (drift - difference.clamp(max=self.margin))
