"""Structures for every synthetic CT: the segmentation stage, the segmenter on any working grid, the requested GTV kept."""

import nibabel as nib
import numpy as np
import pytest
import torch

from helpers import TINY, run_bundle
from scripts.data.labels import LABELS, NUM_LABELS
from scripts.networks.checkpoint import load_checkpoint
from scripts.networks.loading import load_segmentation
from scripts.sampling.structures import Segmenter, structure_segmenter
from scripts.sampling.tumor_request import mask_from_centre


@pytest.fixture(scope="module")
def segmenter(trained) -> Segmenter:
    return structure_segmenter(trained.dir / "segmentation.pt")


def test_segmentation_stage_trains_and_records_its_grid(trained):
    checkpoint = torch.load(trained.dir / "segmentation.pt", weights_only=True)
    record = checkpoint["segmentation_record"]
    assert record["image_size"] == [TINY["grid_size"]] * 3 and record["roi_size"] == record["image_size"]
    assert record["network"]["out_channels"] == NUM_LABELS == len(LABELS)
    network, _ = load_segmentation(trained.dir / "segmentation.pt")
    changed = [
        not torch.equal(v, trained.initial_segmentation[k])
        for k, v in network.state_dict().items()
        if v.is_floating_point()
    ]
    assert sum(changed) / len(changed) > 0.9, "training moved the weights"


def test_label_map_has_the_ct_shape_at_any_grid(segmenter):
    rng = np.random.default_rng(0)
    for shape in ((32, 32, 32), (48, 40, 24)):
        hu = rng.integers(-1000, 1000, shape).astype(np.int16)
        label = segmenter(hu)
        assert label.shape == shape and label.dtype == np.uint8 and label.max() < NUM_LABELS


def test_requested_tumor_is_gtv_1_exactly(segmenter, trained):
    record = load_checkpoint(trained.dir / "diffusion.pt", ("diffusion_record",))["diffusion_record"]
    mask, _ = mask_from_centre(record, [60.0, 0.0, 0.0], 60.0)
    hu = np.full(mask.shape, -800, np.int16)
    label = segmenter(hu, mask)
    assert np.array_equal(label == LABELS["gtv_1"], mask.astype(bool))
    with pytest.raises(ValueError, match="tumor mask of shape"):
        segmenter(hu, mask[:-1])


def test_missing_weights_give_the_ct_alone_with_a_warning(trained, tmp_path, caplog):
    assert structure_segmenter(tmp_path / "segmentation.pt") is None
    assert "structures: no segmentation weights at" in caplog.text and str(tmp_path) in caplog.text
    assert structure_segmenter(trained.dir / "segmentation.pt", enabled=False) is None, "--structures false"


def test_inference_writes_a_label_map_beside_each_ct(trained, tmp_path):
    overrides = {"model_dir": str(trained.dir), "output_dir": str(tmp_path), "num_inference_steps": 2, "seed": 3}
    run_bundle(["inference_tumor.json"], {**overrides, "tumor_center_mm": [60.0, 0.0, 0.0], "tumor_diameter_mm": 50.0})
    ct, label = (nib.load(tmp_path / f"sample_seed3_{kind}.nii.gz") for kind in ("ct", "label"))
    mask = np.asanyarray(nib.load(tmp_path / "sample_seed3_mask.nii.gz").dataobj) > 0
    ids = np.asanyarray(label.dataobj)
    assert label.shape == ct.shape and np.allclose(label.affine, ct.affine) and label.get_data_dtype() == np.uint8
    assert np.array_equal(ids == LABELS["gtv_1"], mask), "GTV-1 is the request's mask"
    without = run_bundle(["inference.json"], {**overrides, "output_dir": str(tmp_path / "plain"), "structures": False})
    assert without.returncode == 0 and not (tmp_path / "plain" / "sample_seed3_label.nii.gz").exists()


def test_structures_carry_onto_a_patients_own_grid(segmenter):
    """A patient's CT on a finer grid, mirrored in x and reaching past the working box in z (a tumor inserted into it)."""
    working_hu = np.random.default_rng(1).integers(-1000, 1000, (32, 32, 32)).astype(np.int16)
    working_affine = np.diag([4.0, 4.0, 5.0, 1.0])
    native_to_working = np.array([[-0.5, 0, 0, 31.2], [0, 0.5, 0, 0.2], [0, 0, 1.0, -2.8], [0, 0, 0, 1.0]])
    shape = (63, 63, 36)
    tumor = np.zeros(shape, bool)
    tumor[20:30, 25:33, 10:14] = True
    native = segmenter.on_native_grid(working_hu, working_affine, working_affine @ native_to_working, tumor)

    working = native_to_working[:3, :3] @ np.indices(shape).reshape(3, -1) + native_to_working[:3, 3:]
    nearest = np.rint(working).astype(int)
    inside = np.all((nearest >= 0) & (nearest <= 31), axis=0)
    expected = np.zeros(nearest.shape[1], np.uint8)
    expected[inside] = segmenter.labels(working_hu, requested=True)[tuple(nearest[:, inside])]
    expected = expected.reshape(shape)
    expected[tumor] = LABELS["gtv_1"]
    assert native.shape == shape and native.dtype == np.uint8
    assert np.array_equal(native, expected)
    assert not native[:, :, :3].any() and not native[:, :, 35].any(), "background beyond the model's box"
    assert np.array_equal(native == LABELS["gtv_1"], tumor), "GTV-1 is the requested tumor exactly"
