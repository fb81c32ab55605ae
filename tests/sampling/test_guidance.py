"""Classifier-free tumor guidance: the tumor-removed condition, the guided prediction, and guided sampling."""

import numpy as np
import pytest
import torch

from scripts.networks.controlnet import ControlledUNet
from scripts.networks.loading import load_autoencoder, load_controlnet, load_diffusion
from scripts.sampling.guidance import TumorGuidance
from scripts.sampling.sampler import LatentDiffusionSampler
from scripts.sampling.tumor_request import mask_from_centre
from scripts.transforms.conditioning import tumor_condition, without_tumor


def test_the_tumor_becomes_lung_where_lungs_are_given_and_vanishes_elsewhere():
    tumor = torch.zeros(8, 8, 8)
    tumor[2:4, 2:4, 2:4] = 1
    lungs = torch.zeros(8, 8, 8)
    lungs[1:6, 1:7, 1:7] = 1
    lungs[2:4, 2:4, 2:4] = 0  # labels put the tumor in place of lung
    with_lungs = torch.stack([tumor, lungs])
    removed = without_tumor(torch.stack([with_lungs, tumor_condition(tumor.numpy())]))
    assert removed[:, 0].sum() == 0
    assert torch.equal(removed[0, 1], torch.maximum(lungs, tumor))
    assert removed[1].sum() == 0, "a tumor-only condition (lungs dropped) loses its tumor and gains no lungs"


@pytest.fixture(scope="module")
def networks(trained):
    """The tiny trained networks, the ControlNet's zero convolutions perturbed so that it clearly reacts to the mask."""
    unet, record = load_diffusion(trained.dir / "diffusion.pt")
    controlnet, _ = load_controlnet(trained.dir / "controlnet.pt")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in controlnet.named_parameters():
            if name.startswith(
                ("controlnet_down_blocks", "controlnet_mid_block", "controlnet_cond_embedding.conv_out")
            ):
                parameter.add_(0.5 * torch.randn(parameter.shape, generator=generator))
    return load_autoencoder(trained.dir / "autoencoder.pt"), unet, controlnet, record


def test_guided_prediction_extrapolates_from_the_tumor_removed_one(networks):
    _, unet, controlnet, record = networks
    network = ControlledUNet(unet, controlnet).eval()
    generator = torch.Generator().manual_seed(0)
    x = torch.randn((2, *record["latent_shape"]), generator=generator)
    t = torch.tensor([500, 20])
    mask, _ = mask_from_centre(record, [40.0, 0.0, 0.0], 60.0, seed=1)
    context = tumor_condition(mask)[None].expand(2, -1, -1, -1, -1)
    with torch.no_grad():
        tumor = network(x, timesteps=t, context=context)
        removed = network(x, timesteps=t, context=without_tumor(context))
        guided = {s: TumorGuidance(network, s)(x, t, context) for s in (0.0, 1.0, 4.0)}
    # the tiny U-Net predicts values near 1e-3 (its output convolution starts at zero), hence the small tolerances
    assert (tumor - removed).abs().max() > 1e-5, "the ControlNet must react to the tumor for this test to mean anything"
    assert torch.allclose(guided[1.0], tumor, rtol=1e-4, atol=1e-7)
    assert torch.allclose(guided[0.0], removed, rtol=1e-4, atol=1e-7)
    assert torch.allclose(guided[4.0], removed + 4.0 * (tumor - removed), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("scale", [-0.5, 25.0, True, float("nan"), "2"])
def test_a_guidance_scale_out_of_range_is_refused_by_name(trained, scale):
    unet, record = load_diffusion(trained.dir / "diffusion.pt")
    with pytest.raises(ValueError, match="guidance_scale"):
        LatentDiffusionSampler(load_autoencoder(trained.dir / "autoencoder.pt"), unet, record, guidance_scale=scale)


def test_guidance_changes_conditioned_samples_only(networks):
    autoencoder, unet, controlnet, record = networks
    plain, guided = (
        LatentDiffusionSampler(autoencoder, unet, record, "ddim", 4, controlnet=controlnet, guidance_scale=s)
        for s in (1.0, 5.0)
    )
    condition = tumor_condition(mask_from_centre(record, [40.0, 0.0, 0.0], 60.0, seed=1)[0])
    assert np.array_equal(plain.sample([3])[0], guided.sample([3])[0]), "no condition, no guidance"
    difference = np.abs(plain.sample([3], condition)[0].astype(int) - guided.sample([3], condition)[0].astype(int))
    assert difference.max() > 0
