"""The default (thesis) configuration: the networks of appendices A and B, checked by shape on the meta device."""

import pytest
import torch
from monai.bundle import ConfigParser
from monai.networks.nets import AutoencoderKL, DiffusionModelUNet

from helpers import BUNDLE


@pytest.fixture
def parsers(monkeypatch):
    monkeypatch.chdir(BUNDLE)  # the configs import common.json relative to the bundle folder
    loaded = {}
    for name in ("train_autoencoder", "train_diffusion"):
        parser = ConfigParser()
        parser.read_config(f"configs/{name}.json")
        loaded[name] = parser
    return loaded


def test_thesis_autoencoder_maps_128_cube_to_3x32_cube_and_back(parsers):
    parser = parsers["train_autoencoder"]
    assert parser.get_parsed_content("image_size") == [128, 128, 128]
    kwargs = parser.get_parsed_content("autoencoder_kwargs")
    with torch.device("meta"):
        autoencoder = AutoencoderKL(**kwargs)
        z = autoencoder.encode_stage_2_inputs(torch.empty(1, 1, 128, 128, 128))
        reconstruction = autoencoder.decode_stage_2_outputs(z)
    assert tuple(z.shape) == (1, 3, 32, 32, 32)
    assert tuple(reconstruction.shape) == (1, 1, 128, 128, 128)
    n_params = sum(p.numel() for p in autoencoder.parameters())
    assert 4.0e6 < n_params < 4.2e6, "the thesis reports 4.1 M parameters for VAE-3"


def test_thesis_unet_denoises_a_3x32_cube_latent(parsers):
    parser = parsers["train_diffusion"]
    parser["latent_channels"] = 3  # what the thesis autoencoder gives, without loading its weights
    kwargs = parser.get_parsed_content("diffusion_kwargs")
    assert kwargs["channels"] == [64, 64, 64] and kwargs["attention_levels"] == [False, True, True]
    with torch.device("meta"):
        unet = DiffusionModelUNet(**kwargs)
        eps = unet(torch.empty(2, 3, 32, 32, 32), timesteps=torch.zeros(2, dtype=torch.long))
    assert tuple(eps.shape) == (2, 3, 32, 32, 32)


def test_thesis_noise_schedule(parsers):
    schedule = parsers["train_diffusion"].get_parsed_content("noise_schedule")
    assert schedule == {
        "num_train_timesteps": 1000,
        "schedule": "scaled_linear_beta",
        "beta_start": 0.0015,
        "beta_end": 0.0195,
        "clip_sample": False,
    }


def test_demo_overlay_shrinks_the_networks(monkeypatch):
    monkeypatch.chdir(BUNDLE)
    parser = ConfigParser()
    parser.read_config(["configs/train_autoencoder.json", "configs/demo.json"])
    assert parser.get_parsed_content("image_size") == [128, 128, 128]
    assert parser.get_parsed_content("image_spacing_mm") == [3.5, 3.5, 2.75]
    assert parser.get_parsed_content("autoencoder_kwargs#channels") == [16, 32, 32, 32]  # 8x: 16^3 latents
    assert parser.get_parsed_content("patch_size") == 64
    pooling, embedding = (
        parser.get_parsed_content(k) for k in ("controlnet_condition_pooling", "controlnet_embedding_channels")
    )
    assert pooling * 2 ** (len(embedding) - 1) == 8, "the ControlNet's pooled mask reaches the 8x latent grid"
