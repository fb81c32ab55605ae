"""Training patches of the autoencoder: the tumor-centred share, crops inside the volume, whole volumes when unset."""

import numpy as np
import pytest
import torch

from scripts.data.labels import LABELS
from scripts.transforms import RandTrainingPatchd


def _case(shape=(48, 40, 32), body=(slice(30, 40), slice(4, 14), slice(20, 30)), tumor=(slice(0, 4),) * 3) -> dict:
    """A label map whose body is a small block away from the centre, with a tumor at the volume's corner."""
    label = torch.zeros((1, *shape), dtype=torch.uint8)
    label[(0, *body)] = LABELS["body"]
    if tumor is not None:
        label[(0, *tumor)] = LABELS["gtv_1"]
    image = torch.arange(np.prod(shape), dtype=torch.int32).reshape(1, *shape)
    return {"image": image, "label": label}


def _patches(case: dict, fraction: float, n: int = 300, size=(16, 12, 8)) -> list[dict]:
    transform = RandTrainingPatchd(["image", "label"], size, tumor_fraction=fraction, num_patches=n)
    transform.set_random_state(0)
    return transform(case)


def test_a_set_share_of_patches_is_centred_on_the_tumor_and_every_patch_lies_inside_the_volume():
    case = _case()
    patches = _patches(case, 0.4)
    on_tumor = np.array([bool(p["tumor_patch"]) for p in patches])
    assert 0.33 < on_tumor.mean() < 0.47
    assert all(tuple(p["image"].shape) == (1, 16, 12, 8) and tuple(p["label"].shape) == (1, 16, 12, 8) for p in patches)
    tumor_ids = torch.tensor([LABELS["gtv_1"]], dtype=torch.uint8)
    assert all(torch.isin(p["label"], tumor_ids).any() for p in patches if p["tumor_patch"])
    for patch in patches:  # each voxel of the image holds its index: image and label are cut from one place inside
        corner = np.unravel_index(int(patch["image"].flatten()[0]), (48, 40, 32))
        assert all(0 <= c <= n - p for c, n, p in zip(corner, (48, 40, 32), (16, 12, 8)))
        window = tuple(slice(c, c + p) for c, p in zip(corner, (16, 12, 8)))
        assert torch.equal(patch["label"][0], case["label"][(0, *window)])


def test_the_other_patches_are_centred_in_the_body_not_anywhere_in_the_volume():
    patches = _patches(_case(tumor=None), 0.4)
    assert not any(bool(p["tumor_patch"]) for p in patches)
    assert all((p["label"] == LABELS["body"]).any() for p in patches)  # a 10-voxel body in a 48 x 40 x 32 volume


def test_whole_volumes_pass_through_without_patch_size():
    case = _case()
    out = RandTrainingPatchd(["image", "label"], None)(case)
    assert torch.equal(out["image"], case["image"]) and torch.equal(out["label"], case["label"])


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"patch_size": [16, 16]}, "patch_size"),
        ({"patch_size": 0}, "patch_size"),
        ({"patch_size": 16, "tumor_fraction": 1.5}, "tumor_patch_fraction"),
        ({"patch_size": 16, "num_patches": 0}, "patches_per_volume"),
    ],
)
def test_bad_patch_parameters_are_named(kwargs, name):
    with pytest.raises(ValueError, match=name):
        RandTrainingPatchd(["image", "label"], **kwargs)


def test_a_patch_larger_than_the_volume_is_named():
    with pytest.raises(ValueError, match="patch_size"):
        RandTrainingPatchd(["image", "label"], [64, 16, 16])(_case())
