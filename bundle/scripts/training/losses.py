"""Autoencoder losses of the thesis: L1 + KL + perceptual (optional) + patch-adversarial.

The L1 term may weigh tumor voxels more (`tumor_l1_weight`): a small autoencoder otherwise
learns to paint a tumor over with lung, and then no diffusion model or ControlNet can bring it back.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from monai.losses import PatchAdversarialLoss, PerceptualLoss

logger = logging.getLogger(__name__)


def kl_divergence(z_mu: torch.Tensor, z_sigma: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma) || N(0, 1)) summed over latent voxels, averaged over the batch."""
    kl = 0.5 * (z_mu.pow(2) + z_sigma.pow(2) - torch.log(z_sigma.pow(2) + 1e-12) - 1.0)
    return kl.flatten(1).sum(1).mean()


def weighted_l1(reconstruction: torch.Tensor, images: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean absolute error, each voxel counted `weight` times (broadcast over channels); plain L1 without a weight."""
    error = (reconstruction - images).abs()
    if weight is None:
        return error.mean()
    weight = weight.expand_as(error)
    return (weight * error).sum() / weight.sum()


def make_perceptual_loss(
    weights_path: str | None, device: torch.device | str = "cpu", spatial_dims: int = 3
) -> PerceptualLoss | None:
    """A 2.5D ResNet-50 perceptual loss from local weights, or None (term off) when no weights are on disk.

    MONAI's perceptual networks download their weights; this machine, like many clinical servers,
    cannot. Point `weights_path` at a ResNet-50 state dict (for example RadImageNet's) to turn it on.
    """
    if not weights_path:
        logger.info("perceptual loss off: set perceptual_weights_path to a local ResNet-50 state dict to use it")
        return None
    if not Path(weights_path).is_file():
        raise FileNotFoundError(f"perceptual_weights_path: no file at {weights_path}")
    return PerceptualLoss(
        spatial_dims=spatial_dims,
        network_type="resnet50",
        is_fake_3d=True,
        fake_3d_ratio=0.2,
        pretrained=True,
        pretrained_path=weights_path,
        pretrained_state_dict_key=None,
    ).to(device)


class AutoencoderLoss:
    """Weighted generator loss of the VAE-GAN; returns the total and each term for logging."""

    def __init__(
        self,
        l1_weight: float = 1.0,
        kl_weight: float = 1e-6,
        perceptual_weight: float = 1e-3,
        adversarial_weight: float = 1e-2,
        perceptual_loss: torch.nn.Module | None = None,
        tumor_l1_weight: float = 1.0,
    ) -> None:
        if tumor_l1_weight < 1.0:
            raise ValueError(
                f"tumor_loss_weight must be >= 1 (1 weighs tumor voxels like any other), got {tumor_l1_weight}"
            )
        self.l1_weight, self.kl_weight, self.tumor_l1_weight = l1_weight, kl_weight, tumor_l1_weight
        self.perceptual_weight, self.adversarial_weight = perceptual_weight, adversarial_weight
        self.perceptual_loss = perceptual_loss
        self.adversarial_loss = PatchAdversarialLoss(criterion="least_squares")

    def generator(
        self,
        images: torch.Tensor,
        reconstruction: torch.Tensor,
        z_mu: torch.Tensor,
        z_sigma: torch.Tensor,
        fake_logits: torch.Tensor | None,
        tumor: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Loss terms for the autoencoder; `fake_logits` is None while the adversarial term warms up.

        `tumor` (B, 1, ...) marks the voxels whose L1 error counts `tumor_l1_weight` times.
        """
        weighted = tumor is not None and self.tumor_l1_weight != 1.0  # weight 1: the thesis' plain L1
        weight = 1.0 + (self.tumor_l1_weight - 1.0) * tumor.float() if weighted else None
        terms = {
            "l1": weighted_l1(reconstruction.float(), images.float(), weight),
            "kl": kl_divergence(z_mu.float(), z_sigma.float()),
        }
        total = self.l1_weight * terms["l1"] + self.kl_weight * terms["kl"]
        if self.perceptual_loss is not None:
            terms["perceptual"] = self.perceptual_loss(reconstruction.float(), images.float())
            total = total + self.perceptual_weight * terms["perceptual"]
        if fake_logits is not None:
            terms["adversarial"] = self.adversarial_loss(
                fake_logits.float(), target_is_real=True, for_discriminator=False
            )
            total = total + self.adversarial_weight * terms["adversarial"]
        terms["total"] = total
        return terms

    def discriminator(self, fake_logits: torch.Tensor, real_logits: torch.Tensor) -> torch.Tensor:
        """Least-squares patch-GAN loss of the discriminator."""
        fake = self.adversarial_loss(fake_logits.float(), target_is_real=False, for_discriminator=True)
        real = self.adversarial_loss(real_logits.float(), target_is_real=True, for_discriminator=True)
        return 0.5 * (fake + real)


def weighted_mse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MSE between `prediction` (C channels) and the noise in `target[:, :C]`, weighted per voxel by `target[:, C]`.

    Further target channels (the latent tumor of `TumorWeightedPrepareBatch`) are left to other terms.
    """
    channels = prediction.shape[1]
    noise, weight = target[:, :channels], target[:, channels : channels + 1]
    return (weight * (prediction.float() - noise.float()) ** 2).sum() / (weight.sum() * channels)
