"""The working grid the networks take: per-axis sizes accepted, a size they cannot halve refused by name with the nearest."""

import pytest

from scripts.bundle_config import load_bundle_config
from scripts.data import network_grid


def test_per_axis_sizes_that_divide_by_both_downsamplings_are_the_grid():
    assert network_grid([512, 512, 128], [64, 128, 256], [64, 128, 256, 512]) == [512, 512, 128]
    assert network_grid(128, [16, 32, 32, 32], [32, 64, 64]) == [128, 128, 128]


def test_a_size_the_networks_cannot_take_is_refused_with_the_nearest_sizes():
    with pytest.raises(
        ValueError, match=r"image_size \[500, 512, 120\].*multiple of 32.*\[480 or 512, 512, 96 or 128\]"
    ):
        network_grid([500, 512, 120], [64, 128, 256], [64, 128, 256, 512])


def test_the_configs_refuse_a_bad_image_size_at_start_up():
    parser = load_bundle_config(["train_autoencoder.json", "highres.json"], {"grid_size": [512, 512, 100]})
    with pytest.raises(RuntimeError) as error:  # MONAI's config error, caused by ours (the user sees both)
        parser.get_parsed_content("image_size")
    assert "image_size [512, 512, 100]" in str(error.value.__cause__)
    assert "nearest sizes that work: [512, 512, 96 or 128]" in str(error.value.__cause__)


def test_the_highres_overlay_gives_the_clinical_grid():
    parser = load_bundle_config(["train_autoencoder.json", "highres.json"])
    assert parser.get_parsed_content("image_size") == [512, 512, 128]
    assert parser.get_parsed_content("image_spacing_mm") == [0.875, 0.875, 2.75]
