"""Tumor conditioning: requested masks, the ControlNet stage, conditioned sampling and the adherence metric."""

import dataclasses
import json

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.networks.nets import DiffusionModelUNet

from helpers import TINY, run_bundle
from scripts.data.labels import LABELS
from scripts.data.volumes import centred_affine
from scripts.evaluation.adherence import tumor_adherence
from scripts.networks.controlnet import ControlledUNet, controlnet_from_unet, controlnet_kwargs
from scripts.networks.loading import load_controlnet, load_diffusion
from scripts.phantoms.thorax import draw_anatomy, render_phantom
from scripts.sampling.tumor_request import mask_from_centre, mask_from_file, requested_mask
from scripts.training.losses import weighted_mse
from scripts.training.prepare_batch import TumorWeightedPrepareBatch
from scripts.transforms.conditioning import ConditioningMaskd
from scripts.transforms.preprocess import preprocessing_chain

RECORD = {"image_size": [32, 32, 32], "image_spacing_mm": [14.0, 14.0, 11.0]}


def test_mask_from_centre_has_the_diameter_and_place():
    mask, affine = mask_from_centre(RECORD, [42.0, -28.0, 22.0], 60.0, seed=1)
    assert np.array_equal(affine, centred_affine((32, 32, 32), RECORD["image_spacing_mm"]))
    centroid_mm = affine[:3, :3] @ np.argwhere(mask).mean(0) + affine[:3, 3]
    assert np.allclose(centroid_mm, [42.0, -28.0, 22.0], atol=8.0)
    volume_mm3 = mask.sum() * np.prod(RECORD["image_spacing_mm"])
    assert 0.5 < volume_mm3 / (np.pi / 6 * 60.0**3) < 1.6, "roughly the volume of a 60 mm sphere"
    again, _ = mask_from_centre(RECORD, [42.0, -28.0, 22.0], 60.0, seed=1)
    other, _ = mask_from_centre(RECORD, [42.0, -28.0, 22.0], 60.0, seed=2)
    assert np.array_equal(mask, again) and not np.array_equal(mask, other), "seeded irregular outline"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"tumor_center_mm": [0, 0, 0], "tumor_diameter_mm": 3.0}, "tumor_diameter_mm"),
        ({"tumor_center_mm": [0, 0, 0], "tumor_diameter_mm": 150.0}, "tumor_diameter_mm"),
        ({"tumor_center_mm": [210.0, 0, 0], "tumor_diameter_mm": 30.0}, "leaves the volume"),
        ({"tumor_center_mm": [0, 0], "tumor_diameter_mm": 30.0}, "three finite numbers"),
        ({"tumor_center_mm": [0, float("nan"), 0], "tumor_diameter_mm": 30.0}, "three finite numbers"),
        ({}, "either mask"),
        ({"mask": "m.nii.gz", "tumor_center_mm": [0, 0, 0]}, "either mask"),
    ],
)
def test_bad_tumor_requests_name_the_parameter(kwargs, match):
    with pytest.raises(ValueError, match=match):
        requested_mask(RECORD, **kwargs)


def _save(tmp_path, data, affine, name="mask.nii.gz"):
    path = tmp_path / name
    nib.save(nib.Nifti1Image(data, affine), path)
    return str(path)


def test_mask_file_on_the_working_grid_maps_voxel_for_voxel(tmp_path):
    mask, affine = mask_from_centre(RECORD, [30.0, 10.0, -20.0], 40.0)
    shifted = affine.copy()
    shifted[:3, 3] += [100.0, -50.0, 7.0]  # a preprocessed case lives anywhere in its patient's frame
    resampled, out_affine = mask_from_file(RECORD, _save(tmp_path, mask, shifted))
    assert np.array_equal(resampled, mask) and np.allclose(out_affine, shifted)


def test_mask_file_in_another_geometry_is_resampled_by_world_coordinates(tmp_path):
    fine = np.zeros((90, 90, 80), np.uint8)
    fine[50:60, 30:42, 40:52] = 1  # 5 mm voxels
    affine = np.diag([5.0, 5.0, 5.0, 1.0])
    affine[:3, 3] = [-200.0, -150.0, 30.0]
    resampled, out_affine = mask_from_file(RECORD, _save(tmp_path, fine, affine))
    world = lambda m, a: a[:3, :3] @ np.argwhere(m).mean(0) + a[:3, 3]  # noqa: E731
    assert np.allclose(world(resampled, out_affine), world(fine, affine), atol=7.0)


@pytest.mark.parametrize(
    "data, match",
    [
        (np.full((8, 8, 8), 2, np.uint8), "binary"),
        (np.zeros((8, 8, 8), np.uint8), "empty"),
        (np.ones((8, 8), np.uint8), "3D"),
    ],
)
def test_bad_mask_files_are_named(tmp_path, data, match):
    path = _save(tmp_path, data, np.eye(4))
    with pytest.raises(ValueError, match=match) as error:
        mask_from_file(RECORD, path)
    assert path in str(error.value)


def test_mask_beyond_the_working_grid_is_refused(tmp_path):
    long = np.zeros((4, 4, 200), np.uint8)
    long[:, :, [0, -1]] = 1  # two blobs 2 m apart cannot fit a 352 mm box
    with pytest.raises(ValueError, match="beyond the working grid"):
        mask_from_file(RECORD, _save(tmp_path, long, np.diag([10.0, 10.0, 10.0, 1.0])))


@pytest.fixture(scope="module")
def phantom_case(tmp_path_factory):
    """A phantom with one 45 mm tumor, preprocessed to the 64^3 demo grid: (HU, label map, spacing)."""
    root = tmp_path_factory.mktemp("phantom96")
    rng = np.random.default_rng(5)
    anatomy = dataclasses.replace(draw_anatomy(rng), tumor_diameters=(45.0,))
    ct, label, affine = render_phantom(anatomy, 96, rng)
    paths = {key: str(root / f"{key}.nii.gz") for key in ("image", "label")}
    nib.save(nib.Nifti1Image(ct, affine), paths["image"])
    nib.save(nib.Nifti1Image(label, affine), paths["label"])
    d = preprocessing_chain(64)[0](paths)
    hu = np.asarray(d["image"][0]) * 1000.0
    return hu, np.asarray(d["label"][0]).astype(int), [7.0, 7.0, 5.5]


def test_adherence_finds_a_real_tumor_and_not_a_missing_one(phantom_case):
    hu, label, spacing = phantom_case
    gtv = label == LABELS["gtv_1"]
    found = tumor_adherence(hu, gtv, spacing)
    assert found["dice"] > 0.5 and found["mask_soft_tissue_fraction"] > 0.8
    assert found["centroid_distance_mm"] < 10.0 and found["mask_in_lungs_fraction"] > 0.9
    assert -100.0 < found["mask_median_hu"] < 100.0, "the phantom's tumor is soft tissue"
    lung_voxels = np.argwhere((label == LABELS["lungs"]) & (hu < -700))
    centre = lung_voxels[len(lung_voxels) // 2]
    elsewhere = np.zeros_like(gtv)
    elsewhere[tuple(slice(c - 1, c + 2) for c in centre)] = True  # 21 mm of air-filled lung
    missing = tumor_adherence(hu, elsewhere, spacing)
    assert missing["mask_soft_tissue_fraction"] < 0.3 and missing["dice"] < 0.2


UNET_KWARGS = dict(
    spatial_dims=3,
    in_channels=3,
    out_channels=3,
    channels=[8, 16, 16],
    num_res_blocks=1,
    norm_num_groups=8,
    attention_levels=[False, False, False],
    num_head_channels=[0, 8, 8],
)


def test_controlnet_starts_from_the_unet_and_matches_the_latent_grid():
    unet = DiffusionModelUNet(**UNET_KWARGS)
    kwargs = controlnet_kwargs(UNET_KWARGS, [8, 16, 16])
    controlnet = controlnet_from_unet(unet, kwargs, latent_downsampling=4)
    assert torch.equal(controlnet.conv_in.conv.weight, unet.conv_in.conv.weight)
    with pytest.raises(ValueError, match="conditioning_embedding_num_channels"):
        controlnet_from_unet(unet, controlnet_kwargs(UNET_KWARGS, [8, 16]), latent_downsampling=4)
    latents, mask = torch.randn(2, 3, 8, 8, 8), torch.zeros(2, 2, 32, 32, 32)
    t = torch.tensor([10, 500])
    steered = ControlledUNet(unet, controlnet)(latents, t, context=mask)
    assert torch.allclose(steered, unet(latents, t)), "zero convolutions: an untrained ControlNet changes nothing"


def test_pooled_controlnet_sees_the_average_pooled_mask():
    """condition_pooling 2 with one embedding level fewer reaches the same latent grid, on the 2x pooled mask."""
    unet = DiffusionModelUNet(**UNET_KWARGS)
    assert "condition_pooling" not in controlnet_kwargs(UNET_KWARGS, [8, 16, 16]), "unpooled records stay as they were"
    pooled = controlnet_from_unet(unet, controlnet_kwargs(UNET_KWARGS, [8, 16], 2), latent_downsampling=4)
    plain = controlnet_from_unet(unet, controlnet_kwargs(UNET_KWARGS, [8, 16]), latent_downsampling=2)
    for p in pooled.parameters():
        torch.nn.init.normal_(p, std=0.1)  # as if trained: no zero convolutions, so the mask shows in the residuals
    plain.load_state_dict(pooled.state_dict())
    latents, t = torch.randn(2, 3, 8, 8, 8), torch.tensor([10, 500])
    mask = (torch.rand(2, 2, 32, 32, 32) > 0.7).float()
    down, mid = pooled(latents, t, controlnet_cond=mask)
    expected_down, expected_mid = plain(latents, t, controlnet_cond=torch.nn.functional.avg_pool3d(mask, 2))
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(down, expected_down))
    assert torch.allclose(mid, expected_mid, atol=1e-5)
    assert not torch.allclose(mid, pooled(latents, t, controlnet_cond=torch.zeros_like(mask))[1]), "the mask matters"
    with pytest.raises(ValueError, match=r"controlnet_condition_pooling \(2\) .* 8x .* give the embedding 2 entries"):
        controlnet_from_unet(unet, controlnet_kwargs(UNET_KWARGS, [8, 16, 16], 2), latent_downsampling=4)
    with pytest.raises(ValueError, match="controlnet_condition_pooling must be a positive integer"):
        controlnet_kwargs(UNET_KWARGS, [8, 16], 0)


def test_conditioning_mask_and_lung_dropout():
    names = ["gtv_1", "gtv_other", "lungs", "body"]
    masks = torch.zeros(4, 4, 4, 4)
    masks[0, 0], masks[1, 1], masks[2] = 1, 1, 1
    kept = ConditioningMaskd(names, lung_dropout=0.0)({"masks": masks})["condition"]
    dropped = ConditioningMaskd(names, lung_dropout=1.0)({"masks": masks})["condition"]
    assert kept.shape == (2, 4, 4, 4) and kept[0].sum() == 32, "tumor = GTV-1 and other GTVs"
    assert kept[1].sum() == 64 and dropped[1].sum() == 0 and torch.equal(kept[0], dropped[0])


def test_tumor_weighted_loss():
    condition = torch.zeros(1, 2, 16, 16, 16)
    condition[:, 0, :4, :4, :4] = 1
    images, _, _, _ = batch = TumorWeightedPrepareBatch(1000, tumor_weight=5.0)(
        {"image": torch.zeros(1, 3, 4, 4, 4), "condition": condition}
    )
    target = batch[1]
    assert target.shape == (1, 5, 4, 4, 4), "noise, weight map, latent tumor"
    assert target[0, 3, 0, 0, 0] == 5.0 and target[0, 3, 3, 3, 3] == 1.0
    assert target[0, 4].sum() == 1 and target[0, 4, 0, 0, 0] == 1, "the tumor covers one latent voxel"
    noise = target[:, :3]
    prediction = noise + 1.0
    assert torch.isclose(weighted_mse(prediction, target), torch.tensor(1.0))
    unweighted = torch.cat([noise, torch.ones_like(noise[:, :1])], dim=1)
    assert torch.isclose(weighted_mse(noise + 2.0, unweighted), torch.nn.functional.mse_loss(noise + 2.0, noise))
    with pytest.raises(ValueError, match="tumor_weight"):
        TumorWeightedPrepareBatch(1000, tumor_weight=0.5)


def test_controlnet_trains_and_records_its_settings(trained):
    controlnet, record = load_controlnet(trained.dir / "controlnet.pt")
    assert record["condition_channels"] == ["tumor", "lungs"] and record["lung_dropout"] == 0.5
    assert record["network"]["conditioning_embedding_num_channels"] == TINY["controlnet_embedding_channels"]
    changed = [k for k, v in controlnet.state_dict().items() if not torch.equal(v, trained.initial_controlnet[k])]
    assert len(changed) > 0.5 * len(trained.initial_controlnet)


def test_controlnet_fine_tuning_starts_from_given_weights(trained):
    unet, record = load_diffusion(trained.dir / "diffusion.pt")
    trained_controlnet, controlnet_record = load_controlnet(trained.dir / "controlnet.pt")
    factor = record["image_size"][0] // record["latent_shape"][1]
    warm = controlnet_from_unet(unet, controlnet_record["network"], factor, str(trained.dir / "controlnet.pt"))
    assert all(torch.equal(v, trained_controlnet.state_dict()[k]) for k, v in warm.state_dict().items())
    other = {**controlnet_record["network"], "conditioning_embedding_num_channels": [4, 16, 16]}
    with pytest.raises(ValueError, match="controlnet_init_path .* holds another ControlNet architecture"):
        controlnet_from_unet(unet, other, factor, str(trained.dir / "controlnet.pt"))


def test_inference_tumor_writes_ct_mask_and_adherence(trained, tmp_path):
    overrides = {"model_dir": str(trained.dir), "output_dir": str(tmp_path), "num_samples": 2, "num_inference_steps": 3}
    run_bundle(
        ["inference_tumor.json"],
        {**overrides, "seed": 3, "tumor_center_mm": [40.0, 0.0, 10.0], "tumor_diameter_mm": 50.0},
    )
    expected, affine = mask_from_centre(dict(RECORD), [40.0, 0.0, 10.0], 50.0, seed=3)
    for seed in (3, 4):
        ct = nib.load(tmp_path / f"sample_seed{seed}_ct.nii.gz")
        mask = nib.load(tmp_path / f"sample_seed{seed}_mask.nii.gz")
        assert ct.shape == mask.shape == (32, 32, 32) and np.allclose(ct.affine, affine)
        assert np.array_equal(np.asanyarray(mask.dataobj), expected), "the mask written is the mask requested"
        report = json.loads((tmp_path / f"sample_seed{seed}_adherence.json").read_text())
        figures = {
            "dice",
            "centroid_distance_mm",
            "mask_soft_tissue_fraction",
            "mask_median_hu",
            "mask_in_lungs_fraction",
        }
        assert set(report) == figures
        assert 0.0 <= report["mask_soft_tissue_fraction"] <= 1.0


def test_inference_tumor_refuses_a_bad_diameter(trained, tmp_path):
    overrides = {"model_dir": str(trained.dir), "output_dir": str(tmp_path), "tumor_center_mm": [0.0, 0.0, 0.0]}
    done = run_bundle(["inference_tumor.json"], {**overrides, "tumor_diameter_mm": 150.0}, check=False)
    assert done.returncode != 0 and "tumor_diameter_mm must be between 5.0 and 100.0" in done.stdout + done.stderr
    assert not list(tmp_path.iterdir()), "nothing written"


def test_adherence_benchmark_scores_conditioned_and_unconditional_samples(trained, phantom_dir, tmp_path):
    import tumor_adherence

    out = tmp_path / "adherence.json"
    args = ["--model-dir", str(trained.dir), "--seeds", "0", "1", "--centres", "40,0,0;-40,0,0", "--steps", "3"]
    result = tumor_adherence.main([*args, "--phantoms", str(phantom_dir), "--cases", "2", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert [(r["centre_mm"], r["seed"]) for r in result["rows"]] == [
        ([40.0, 0.0, 0.0], 0),
        ([40.0, 0.0, 0.0], 1),
        ([-40.0, 0.0, 0.0], 0),
        ([-40.0, 0.0, 0.0], 1),
    ]
    for kind in ("conditioned", "unconditional"):
        values = [r[f"{kind}_mask_soft_tissue_fraction"] for r in result["rows"]]
        assert all(0.0 <= v <= 1.0 for v in values)
        assert result["means"][f"{kind}_mask_soft_tissue_fraction"] == pytest.approx(np.mean(values))
    assert result["reconstruction"], "the phantoms have tumors on the working grid"
    for row in result["reconstruction"]:
        assert row["gtv_voxels"] > 0 and row["original_gtv_tissue_fraction"] > 0.5, (
            f"the mask lies on the phantom's tumor: {row}"
        )
        assert 0.0 <= row["reconstructed_gtv_tissue_fraction"] <= 1.0
    missing = tumor_adherence.means(
        [{**result["rows"][0], "conditioned_centroid_distance_mm": None}, result["rows"][1]]
    )
    assert missing["conditioned_centroid_distance_mm"] == result["rows"][1]["conditioned_centroid_distance_mm"]
