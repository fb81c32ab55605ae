"""Autoencoder losses: KL, the weighted sum of the thesis, and the perceptual term from local weights only."""

import pytest
import torch
import torchvision

from scripts.training.losses import AutoencoderLoss, kl_divergence, make_perceptual_loss


def test_kl_is_zero_for_the_prior_and_grows_away_from_it():
    mu, sigma = torch.zeros(2, 3, 4, 4, 4), torch.ones(2, 3, 4, 4, 4)
    assert kl_divergence(mu, sigma).item() == pytest.approx(0.0, abs=1e-6)
    # per voxel 0.5 * mu^2 with mu = 1: 0.5 * 192 voxels per sample
    assert kl_divergence(mu + 1.0, sigma).item() == pytest.approx(96.0)


def test_generator_loss_weights_its_terms():
    images = torch.zeros(1, 1, 8, 8, 8)
    reconstruction = images + 0.5
    mu, sigma = torch.ones(1, 3, 2, 2, 2), torch.ones(1, 3, 2, 2, 2)
    loss = AutoencoderLoss(l1_weight=1.0, kl_weight=0.1, adversarial_weight=0.01)
    warmup = loss.generator(images, reconstruction, mu, sigma, fake_logits=None)
    assert set(warmup) == {"l1", "kl", "total"}
    assert warmup["total"].item() == pytest.approx(0.5 + 0.1 * 12.0)
    adversarial = loss.generator(images, reconstruction, mu, sigma, fake_logits=torch.zeros(1, 1, 2, 2, 2))
    assert adversarial["adversarial"].item() == pytest.approx(1.0), "least squares: (0 - 1)^2"
    assert adversarial["total"].item() == pytest.approx(warmup["total"].item() + 0.01)


def test_tumor_voxels_count_tumor_l1_weight_times():
    images = torch.zeros(1, 1, 4, 4, 4)
    tumor = torch.zeros(1, 1, 4, 4, 4)
    tumor[..., :2, :2, :2] = 1.0  # 8 of 64 voxels
    reconstruction = images + tumor  # error 1 inside the tumor, 0 elsewhere
    mu, sigma = torch.zeros(1, 3, 1, 1, 1), torch.ones(1, 3, 1, 1, 1)
    plain = AutoencoderLoss().generator(images, reconstruction, mu, sigma, None, tumor)
    assert plain["l1"].item() == pytest.approx(8 / 64)
    weighted = AutoencoderLoss(tumor_l1_weight=20.0).generator(images, reconstruction, mu, sigma, None, tumor)
    assert weighted["l1"].item() == pytest.approx(20 * 8 / (20 * 8 + 56))
    with pytest.raises(ValueError, match="tumor_loss_weight"):
        AutoencoderLoss(tumor_l1_weight=0.5)


def test_perceptual_loss_is_off_without_weights_and_named_when_missing(tmp_path):
    assert make_perceptual_loss(None) is None
    with pytest.raises(FileNotFoundError, match="perceptual_weights_path"):
        make_perceptual_loss(str(tmp_path / "missing.pt"))


def test_perceptual_loss_loads_local_resnet50_weights(tmp_path):
    path = tmp_path / "resnet50.pt"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), path)
    perceptual = make_perceptual_loss(str(path))
    image = torch.rand(1, 1, 32, 32, 32, generator=torch.Generator().manual_seed(0))
    assert perceptual(image, image).item() == pytest.approx(0.0, abs=1e-6)
    assert perceptual(image, torch.flip(image, dims=[2])).item() > 0.0
