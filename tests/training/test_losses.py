"""Losses: the autoencoder's KL, weighted sum and perceptual term from local weights; the ControlNet's contrastive pair."""

import pytest
import torch
import torchvision

from scripts.training.contrastive import TumorContrastiveLoss, TumorContrastivePair, contrastive_network
from scripts.training.losses import AutoencoderLoss, kl_divergence, make_perceptual_loss, weighted_mse
from scripts.transforms.conditioning import without_tumor


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


def contrastive_target(tumor_weight: float = 5.0) -> torch.Tensor:
    """A TumorWeightedPrepareBatch target: 2 noise channels of zeros, the weight map and a 2^3 tumor in a 6^3 grid."""
    tumor = torch.zeros(1, 1, 6, 6, 6)
    tumor[..., :2, :2, :2] = 1
    return torch.cat([torch.zeros(1, 2, 6, 6, 6), 1 + (tumor_weight - 1) * tumor, tumor], dim=1)


def test_contrastive_loss_rewards_a_tumor_difference_up_to_the_margin():
    target = contrastive_target()
    tumor = target[:, 3:]
    with_tumor = torch.full((1, 2, 6, 6, 6), 0.5)
    base = weighted_mse(with_tumor, target).item()
    assert base == pytest.approx(0.25), "a uniform error weighs the same under any weight map"
    loss = TumorContrastiveLoss(weight=0.1, margin=2.0)
    removed = with_tumor - 1.5 * tumor  # differs by 1.5 inside the tumor only
    assert loss(torch.cat([with_tumor, removed], 1), target).item() == pytest.approx(base + 0.1 * (0.5 - 1.5), rel=1e-5)
    removed = with_tumor - 3.0 * tumor  # beyond the margin the difference counts as 2
    assert loss(torch.cat([with_tumor, removed], 1), target).item() == pytest.approx(base + 0.1 * (0.5 - 2.0), rel=1e-5)
    rim = torch.zeros_like(tumor)
    rim[..., 2, :3, :3] = 1  # next to the tumor: left out of the background term
    drift = torch.cat([with_tumor, with_tumor + 4.0 * rim], 1)
    assert loss(drift, target).item() == pytest.approx(base + 0.1 * 0.5, rel=1e-5)
    assert TumorContrastiveLoss()(with_tumor, target).item() == pytest.approx(base), "weight 0: plain weighted MSE"


def test_contrastive_loss_refuses_single_predictions_and_bad_settings():
    with pytest.raises(ValueError, match="needs TumorContrastivePair's 4-channel predictions, got 2"):
        TumorContrastiveLoss(weight=0.1)(torch.zeros(1, 2, 6, 6, 6), contrastive_target())
    with pytest.raises(ValueError, match="contrastive_margin"):
        TumorContrastiveLoss(weight=0.1, margin=0.0)
    with pytest.raises(ValueError, match="contrastive_loss_weight"):
        contrastive_network(torch.nn.Identity(), -1.0)


def test_contrastive_pair_predicts_with_and_without_the_tumor_while_training():
    def controlled(x, timesteps, context):
        return x * context.sum(1, keepdim=True) + context[:, :1]  # tells the tumor channel from the lung one

    class Controlled(torch.nn.Module):
        forward = staticmethod(controlled)

    pair = contrastive_network(Controlled(), 0.1)
    assert isinstance(pair, TumorContrastivePair) and contrastive_network(Controlled(), 0.0).__class__ is Controlled
    x, timesteps = torch.randn(2, 3, 4, 4, 4), torch.tensor([10, 500])
    context = torch.zeros(2, 2, 4, 4, 4)
    context[:, 0, :2], context[:, 1, 2:] = 1, 1
    both = pair.train()(x, timesteps, context)
    assert both.shape == (2, 6, 4, 4, 4)
    assert torch.equal(both[:, :3], controlled(x, timesteps, context))
    assert torch.equal(both[:, 3:], controlled(x, timesteps, without_tumor(context)))
    assert torch.equal(pair.eval()(x, timesteps, context), controlled(x, timesteps, context))
