"""The working grid from `grid_size` and the cached datasets of each datalist split."""

import pytest
import torch
from monai.data import load_decathlon_datalist

from scripts.bundle_config import load_bundle_config
from scripts.data.datalist import cached_split
from scripts.data.grid import grid_shape, grid_spacing


def test_grid_is_a_cube_or_three_sizes_with_spacing_over_the_field_of_view():
    assert grid_shape(64) == [64, 64, 64]
    assert grid_shape([512, 512, 128]) == [512, 512, 128]
    assert grid_spacing([448.0, 448.0, 352.0], [512, 512, 128]) == [0.875, 0.875, 2.75]


@pytest.mark.parametrize("bad", [0, [64, 64], [64, 64, -1]])
def test_a_grid_size_that_is_no_grid_is_refused_by_name(bad):
    with pytest.raises(ValueError, match="grid_size"):
        grid_shape(bad)


def _chains(grid: int) -> dict:
    parser = load_bundle_config(["common.json"], {"grid_size": grid})
    return {k: parser.get_parsed_content(k) for k in ("stored_preprocessing", "network_inputs", "preprocessing")}


def test_cached_split_reads_one_split_and_refuses_an_unknown_one(phantom_dir, tmp_path):
    chains = _chains(32)
    datalist = str(phantom_dir / "datalist.json")
    dataset = cached_split(
        datalist, "training", chains["stored_preprocessing"], str(tmp_path), chains["network_inputs"]
    )
    assert len(dataset) == 2 and tuple(dataset[0]["image"].shape) == (1, 32, 32, 32)
    with pytest.raises(ValueError, match="split"):
        cached_split(datalist, "train", chains["stored_preprocessing"], str(tmp_path))


def test_the_cache_holds_int16_hu_and_uint8_labels_and_loads_what_the_whole_chain_gives(phantom_dir, tmp_path):
    chains = _chains(32)
    datalist = str(phantom_dir / "datalist.json")
    item = cached_split(
        datalist, "validation", chains["stored_preprocessing"], str(tmp_path), chains["network_inputs"]
    )[0]
    (stored,) = tmp_path.glob("*.pt")
    cached = torch.load(stored, weights_only=True)
    assert cached["image"].dtype == torch.int16 and cached["label"].dtype == torch.uint8
    assert stored.stat().st_size < 3 * 32**3 + 16_000  # 3 bytes a voxel and the pickle's own few kB
    whole = chains["preprocessing"](load_decathlon_datalist(datalist, True, "validation")[0])
    assert item["image"].dtype == torch.float32
    assert float((item["image"] - whole["image"]).abs().max()) <= 0.5 / 1000 + 1e-6  # within half a HU (1 HU = 0.001)
    assert torch.equal(item["masks"], whole["masks"])
