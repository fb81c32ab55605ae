"""Evaluation metrics on phantoms: FID and MMD order real < corrupted < noise; diversity; feature networks; perceptual; MS-SSIM."""

import numpy as np
import pytest
import torch
import torchvision
from monai.data import MetaTensor
from monai.metrics import MultiScaleSSIMMetric

from helpers import TINY
from helpers.corrupt import CORRUPTIONS, preprocessed_phantoms
from scripts.bundle_config import load_bundle_config
from scripts.evaluation.autoencoder import Reconstructor
from scripts.evaluation.distances import fid_2p5d, mmd
from scripts.evaluation.diversity import diversity, volume_pairs
from scripts.evaluation.features import AXES, RadImageNetSliceFeatures, make_feature_network
from scripts.networks.loading import load_autoencoder
from scripts.phantoms.thorax import write_phantoms
from scripts.training.losses import make_perceptual_loss

GRID = TINY["grid_size"]


def _batch(volumes) -> torch.Tensor:
    """HU volumes as the networks see them: (N, 1, X, Y, Z) in [-1, 1]."""
    return torch.stack([torch.as_tensor(np.clip(v, -1000, 1000) / 1000.0, dtype=torch.float32)[None] for v in volumes])


@pytest.fixture(scope="module")
def two_sets(tmp_path_factory):
    """Two independent sets of 16 phantoms on the working grid: (hu, lungs, spacing) each."""
    sets = []
    for seed in (21, 22):
        root = tmp_path_factory.mktemp(f"fid{seed}")
        write_phantoms(str(root), n=16, size=GRID, seed=seed)
        sets.append(preprocessed_phantoms(root, GRID))
    return sets


@pytest.fixture(scope="module")
def features(trained):
    return make_feature_network(str(trained.dir / "autoencoder.pt"))


@pytest.fixture(scope="module")
def distances(two_sets, features):
    """FID and MMD of set A (as it is, and corrupted each way) against set B."""
    a, b = two_sets
    images_b = _batch([c[0] for c in b])
    real_b = [features(x) for x in images_b]
    found = {}
    for kind in ["real", *sorted(CORRUPTIONS)]:
        rng = np.random.default_rng(5)
        volumes = [c[0] if kind == "real" else CORRUPTIONS[kind](*c, rng) for c in a]
        images = _batch(volumes)
        found[kind] = (fid_2p5d([features(x) for x in images], real_b), mmd(images, images_b))
    return found


def test_fid_of_real_phantoms_is_far_below_noise_and_below_every_corruption(distances):
    real_fid = distances["real"][0]["fid_2p5d"]
    assert real_fid > 0
    for kind, (fid, _) in distances.items():
        assert set(fid) == {"fid_2p5d", *(f"fid_{a}" for a in AXES)}
        assert np.isclose(fid["fid_2p5d"], np.mean([fid[f"fid_{a}"] for a in AXES]))
        if kind in ("white_noise", "smooth_noise", "air_only"):
            assert fid["fid_2p5d"] > 4 * real_fid, f"{kind}: {fid['fid_2p5d']:.3g} vs real {real_fid:.3g}"
        elif kind != "real":
            assert fid["fid_2p5d"] > 1.3 * real_fid, f"{kind}: {fid['fid_2p5d']:.3g} vs real {real_fid:.3g}"


def test_mmd_of_real_phantoms_is_below_every_corruption(distances):
    real_mmd = distances["real"][1]
    assert abs(real_mmd) < 0.005
    for kind, (_, value) in distances.items():
        if kind != "real":
            assert value > 3 * max(real_mmd, 1e-4), f"{kind}: MMD {value:.3g} vs real {real_mmd:.3g}"


def test_mmd_takes_sets_of_different_sizes():
    rng = np.random.default_rng(0)
    same = mmd(torch.as_tensor(rng.normal(size=(5, 1, 8, 8, 8))), torch.as_tensor(rng.normal(size=(9, 1, 8, 8, 8))))
    shifted = mmd(
        torch.as_tensor(rng.normal(size=(5, 1, 8, 8, 8)) + 0.5), torch.as_tensor(rng.normal(size=(9, 1, 8, 8, 8)))
    )
    assert abs(same) < 0.05 and abs(shifted - 0.25) < 0.05, "per-voxel MMD of a mean shift d is about d^2"
    with pytest.raises(ValueError, match="at least two volumes"):
        mmd(torch.zeros(1, 1, 8, 8, 8), torch.zeros(4, 1, 8, 8, 8))


def test_autoencoder_features_are_latent_slices(trained, features, two_sets):
    image = _batch([two_sets[0][0][0]])[0]
    found = features(image)
    latent = GRID // 4
    assert list(found) == list(AXES)
    assert all(tuple(f.shape) == (latent, 3 * latent * latent) for f in found.values()), (
        "pooling a latent slice to its own size keeps it"
    )
    assert "autoencoder" in features.name
    assert torch.equal(found["axial"], features(image)["axial"]), "features are deterministic"


@pytest.fixture(scope="module")
def resnet50_weights(tmp_path_factory):
    """A torchvision ResNet-50 state dict on disk (random weights: the same file format as RadImageNet's converted ones)."""
    path = tmp_path_factory.mktemp("weights") / "resnet50.pt"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), path)
    return path


def test_radimagenet_features_from_a_local_resnet50(tmp_path, two_sets, resnet50_weights):
    network = make_feature_network("unused.pt", str(resnet50_weights))
    found = network(_batch([two_sets[0][0][0]])[0])
    assert isinstance(network, RadImageNetSliceFeatures) and "RadImageNet ResNet-50" in network.name
    assert all(tuple(f.shape) == (GRID, 2048) and torch.isfinite(f).all() for f in found.values())
    torch.save({"something": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="other.pt is not a torchvision ResNet-50 state dict"):
        RadImageNetSliceFeatures(str(tmp_path / "other.pt"))
    with pytest.raises(FileNotFoundError, match="feature_weights_path: no file at"):
        RadImageNetSliceFeatures(str(tmp_path / "absent.pt"))


def test_perceptual_loss_is_scored_when_weights_are_on_disk(trained, two_sets, resnet50_weights):
    perceptual = make_perceptual_loss(str(resnet50_weights))
    reconstructor = Reconstructor(load_autoencoder(trained.dir / "autoencoder.pt"), [-1000, 1000], perceptual)
    image = MetaTensor(_batch([two_sets[0][0][0]])[0])
    scored = reconstructor.score({"image": image, "case": "a/PHANTOM-X"}, "test")
    assert scored.case == "PHANTOM-X" and scored.split == "test"
    assert np.isfinite(scored.metrics["perceptual"]) and scored.metrics["perceptual"] > 0
    assert scored.latent.shape == (3 * (GRID // 4) ** 3,) and scored.image.shape == (GRID**3,)


@pytest.fixture(scope="module")
def similarity():
    """The SSIM and MS-SSIM metrics as configs/evaluate_generation.json sets them."""
    parser = load_bundle_config(["evaluate_generation.json"])
    return parser.get_parsed_content("ssim"), parser.get_parsed_content("ms_ssim")


def test_diversity_is_one_for_copies_and_near_zero_for_independent_noise(similarity):
    ssim, ms_ssim = similarity
    generator = torch.Generator().manual_seed(0)
    noise = torch.rand((4, 1, 32, 32, 32), generator=generator) * 2 - 1
    copies = noise[:1].repeat(3, 1, 1, 1, 1)
    alike = diversity(copies, ssim, ms_ssim)
    assert alike["ssim_diversity"] == pytest.approx(1.0, abs=1e-4) and alike["ms_ssim_diversity"] == pytest.approx(
        1.0, abs=1e-4
    )
    diverse = diversity(noise, ssim, ms_ssim)
    assert abs(diverse["ssim_diversity"]) < 0.05 and diverse["ms_ssim_diversity"] < 0.2
    assert diverse["diversity_pairs"] == 6
    with pytest.raises(ValueError, match="at least two volumes"):
        diversity(noise[:1], ssim, ms_ssim)


@pytest.mark.parametrize("side", [32, 64, 128])
def test_ms_ssim_settings_work_from_32_to_128_voxels(similarity, side):
    _, ms_ssim = similarity
    image = torch.rand((1, 1, side, side, side), generator=torch.Generator().manual_seed(side))
    assert float(ms_ssim(image, image)) == pytest.approx(1.0, abs=1e-4)
    assert abs(sum(ms_ssim.weights) - 1.0) < 1e-6
    with pytest.raises(ValueError, match="must be larger than 160"):
        MultiScaleSSIMMetric(spatial_dims=3, data_range=2.0)(image, image)


def test_volume_pairs_are_capped_and_seeded():
    assert volume_pairs(4, 100) == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    drawn = volume_pairs(50, 20, seed=3)
    assert len(drawn) == 20 == len(set(drawn)) and drawn == volume_pairs(50, 20, seed=3)
    assert all(i < j < 50 for i, j in drawn)


def test_fid_needs_volumes_on_both_sides():
    with pytest.raises(ValueError, match="FID needs volumes on both sides"):
        fid_2p5d([], [{a: torch.zeros(4, 3) for a in AXES}])
    with pytest.raises(ValueError, match="at least two sagittal slices"):
        fid_2p5d([{a: torch.zeros(1, 3) for a in AXES}], [{a: torch.zeros(4, 3) for a in AXES}])
