"""Whole or tiled by default: "auto" keeps whole volumes that fit in free memory and tiles those that do not."""

import torch
from monai.networks.nets import AutoencoderKL

from scripts.networks.tile_plan import AUTO, AUTO_TILE, free_memory_bytes, planned_tile, whole_volume_bytes

AUTOENCODER = AutoencoderKL(
    spatial_dims=3, in_channels=1, out_channels=1, channels=(8, 16), latent_channels=2, num_res_blocks=1,
    norm_num_groups=4, attention_levels=(False, False),
)  # fmt: skip


def test_the_whole_volume_estimate_is_three_full_resolution_activations_of_the_wider_fine_level():
    assert whole_volume_bytes(AUTOENCODER, (2, 512, 512, 128), torch.float32) == 3 * 16 * 2 * 512 * 512 * 128 * 4
    assert whole_volume_bytes(AUTOENCODER, (512, 512, 128), torch.bfloat16) == 3 * 16 * 512 * 512 * 128 * 2


def test_auto_decodes_whole_what_fits_and_tiles_what_does_not():
    assert 0 < free_memory_bytes("cpu")
    assert planned_tile(AUTO, AUTOENCODER, (1, 32, 32, 32), "cpu") is None
    assert planned_tile(AUTO, AUTOENCODER, (64, 4096, 4096, 1024), "cpu") == AUTO_TILE  # petabytes whole


def test_a_tile_or_none_given_is_kept():
    assert planned_tile(None, AUTOENCODER, (64, 4096, 4096, 1024), "cpu") is None
    assert planned_tile([4, 4, 2], AUTOENCODER, (1, 32, 32, 32), "cpu") == [4, 4, 2]
