"""Tiled encoding (`scripts.networks.tiling`): equal to whole encoding within the stated bound, in bounded tiles, refused where it cannot be."""

import pytest
import torch
from monai.networks.nets import AutoencoderKL

from scripts.networks import TiledEncoder, tiled_reconstruct
from scripts.training.latents import encode_dataset

#: The bound of the module docstring: max |tiled - whole| of z_mu and z_sigma, relative to the whole result's std (float32).
TOLERANCE = 1e-4
#: Reconstructions carry the latents' rounding through the decoder too, which random weights amplify.
RECONSTRUCTION_TOLERANCE = 1e-3
KWARGS = {
    "spatial_dims": 3,
    "in_channels": 1,
    "out_channels": 1,
    "channels": (8, 8, 8),
    "latent_channels": 3,
    "num_res_blocks": (1, 1, 1),
    "norm_num_groups": 4,
}
FACTOR = 4  # two downsamplings


def autoencoder(attention_levels: list[bool]) -> AutoencoderKL:
    """A tiny AutoencoderKL with seeded random weights."""
    torch.manual_seed(0)
    return AutoencoderKL(**KWARGS, attention_levels=attention_levels).eval()


def images(shape: tuple[int, ...]) -> torch.Tensor:
    """Two random volumes with different means and spreads, so that per-sample statistics matter."""
    x = torch.randn((2, 1, *shape), generator=torch.Generator().manual_seed(1))
    return x * torch.tensor([1.0, 3.0]).reshape(2, 1, 1, 1, 1) + torch.tensor([0.0, 2.0]).reshape(2, 1, 1, 1, 1)


def relative_difference(tiled: torch.Tensor, whole: torch.Tensor) -> float:
    """Max absolute difference relative to the whole result's standard deviation."""
    return float((tiled - whole).abs().max() / whole.std())


@pytest.fixture(scope="module")
def plain() -> AutoencoderKL:
    """No attention at all."""
    return autoencoder([False, False, False])


@pytest.mark.parametrize(
    ("attention_levels", "shape", "tile"),
    [
        ([False, False, False], (32, 48, 40), [3, 5, 4]),  # tiles that do not divide the 8x12x10 latent
        ([False, False, True], (32, 48, 40), 5),  # attention at the latent resolution, run whole
        ([False, False, True], (33, 46, 42), 4),  # a volume the downsampling factor does not divide
    ],
)
def test_tiled_encoding_equals_whole_encoding_within_the_bound(attention_levels, shape, tile):
    network, x = autoencoder(attention_levels), images(shape)
    with torch.no_grad():
        whole = network.encode(x)
    tiled = TiledEncoder(network, tile)
    assert tiled.halo == 3, "the encoder's receptive field beyond a tile, in latent voxels"
    for name, t, w in zip(("z_mu", "z_sigma"), tiled(x), whole):
        assert t.shape == w.shape
        assert relative_difference(t, w) < TOLERANCE, name
        assert w.std() > 0.05, f"a non-trivial {name}"


def test_a_halo_narrower_than_the_receptive_field_breaks_the_bound(plain):
    x = images((32, 48, 40))
    with torch.no_grad():
        whole_mu, _ = plain.encode(x)
    narrow = TiledEncoder(plain, 4)
    narrow.halo -= 1
    assert relative_difference(narrow(x)[0], whole_mu) > 100 * TOLERANCE


def test_no_tile_input_exceeds_its_core_and_halo(plain):
    x, tile = images((48, 48, 40)), [4, 5, 3]
    tiled = TiledEncoder(plain, tile)
    seen = []
    handle = plain.encoder.blocks[0].register_forward_pre_hook(lambda module, args: seen.append(args[0][0, 0].numel()))
    try:
        tiled(x)
    finally:
        handle.remove()
    bound = (tile[0] + 2 * tiled.halo) * (tile[1] + 2 * tiled.halo) * (tile[2] + 2 * tiled.halo) * FACTOR**3
    assert len(seen) == 3 * 3 * 4 * (len(tiled.norms) + 1), (
        "each tile run once per norm to gather statistics, then once"
    )
    assert max(seen) <= bound < x[0, 0].numel()


def test_tiled_reconstruction_equals_whole_reconstruction(plain):
    x = images((32, 48, 40))
    with torch.no_grad():
        whole = plain.reconstruct(x)
    assert relative_difference(tiled_reconstruct(plain, x, 5), whole) < RECONSTRUCTION_TOLERANCE


def test_encode_dataset_encodes_each_volume_in_tiles(plain):
    x = images((32, 32, 32))
    loader = [{"image": x, "label": torch.tensor([3, 4])}]
    whole = encode_dataset(plain, loader, "cpu", keep_keys=["label"])
    tiled = encode_dataset(plain, loader, "cpu", keep_keys=["label"], encode_tile=4)
    assert [int(d["label"]) for d in tiled] == [3, 4]
    for w, t in zip(whole, tiled):
        assert t["z_mu"].shape == w["z_mu"].shape == (3, 8, 8, 8)
        assert relative_difference(t["z_mu"], w["z_mu"]) < TOLERANCE
        assert relative_difference(t["z_sigma"], w["z_sigma"]) < TOLERANCE


def test_tiling_is_refused_where_it_would_cut_attention():
    with pytest.raises(ValueError, match="encode_tile: .*attention above the latent resolution"):
        TiledEncoder(autoencoder([False, True, True]), 4)


@pytest.mark.parametrize("tile", [0, -2, [4, 4], [4, 0, 4]])
def test_a_bad_tile_size_is_refused_by_name(plain, tile):
    with pytest.raises(ValueError, match="encode_tile must be a positive number of latent voxels"):
        TiledEncoder(plain, tile)
