"""The working grid from `grid_size` and the cached datasets of each datalist split."""

import pytest

from scripts.data.datalist import cached_split
from scripts.data.volumes import grid_shape, grid_spacing
from scripts.transforms.preprocess import preprocessing_chain


def test_grid_is_a_cube_or_three_sizes_with_spacing_over_the_field_of_view():
    assert grid_shape(64) == [64, 64, 64]
    assert grid_shape([512, 512, 128]) == [512, 512, 128]
    assert grid_spacing([448.0, 448.0, 352.0], [512, 512, 128]) == [0.875, 0.875, 2.75]


@pytest.mark.parametrize("bad", [0, [64, 64], [64, 64, -1]])
def test_a_grid_size_that_is_no_grid_is_refused_by_name(bad):
    with pytest.raises(ValueError, match="grid_size"):
        grid_shape(bad)


def test_cached_split_reads_one_split_and_refuses_an_unknown_one(phantom_dir, tmp_path):
    chain, _ = preprocessing_chain(32)
    dataset = cached_split(str(phantom_dir / "datalist.json"), "training", chain, str(tmp_path))
    assert len(dataset) == 2 and tuple(dataset[0]["image"].shape) == (1, 32, 32, 32)
    with pytest.raises(ValueError, match="split"):
        cached_split(str(phantom_dir / "datalist.json"), "train", chain, str(tmp_path))
