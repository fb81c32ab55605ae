"""MONAI datalist JSON: a seeded train/validation/test split of case folders, and one split as a cached dataset."""

from __future__ import annotations

import json
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from monai.data import Dataset, MetaTensor, PersistentDataset, load_decathlon_datalist
from monai.data.utils import pickle_hashing
from monai.transforms import Compose, Transform

#: Keys of the datalist's sections, as `monai.data.load_decathlon_datalist` reads them.
SPLITS = ("training", "validation", "test")


def split_cases(cases: list[str], seed: int, val_fraction: float, test_fraction: float) -> dict[str, list[str]]:
    """Shuffle `cases` with `seed` and cut them into test, validation and training lists.

    Test and validation each get at least one case when there are three cases or more, so a
    small data set still validates; the rest trains.
    """
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {value}")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(f"val_fraction + test_fraction must be below 1, got {val_fraction + test_fraction}")
    order = [cases[i] for i in np.random.default_rng(seed).permutation(len(cases))]
    at_least = 1 if len(cases) >= 3 else 0
    n_test = max(at_least if test_fraction > 0 else 0, int(round(test_fraction * len(cases))))
    n_val = max(at_least if val_fraction > 0 else 0, int(round(val_fraction * len(cases))))
    return {
        "test": sorted(order[:n_test]),
        "validation": sorted(order[n_test : n_test + n_val]),
        "training": sorted(order[n_test + n_val :]),
    }


def write_datalist(
    root: Path, cases: list[str], seed: int = 0, val_fraction: float = 0.1, test_fraction: float = 0.05
) -> Path:
    """Write `root/datalist.json`: per split, entries `{"image": "<case>/ct.nii.gz", "label": ..., "case": ...}`.

    Paths are relative to `root`, so the data set folder can move.
    """
    splits = split_cases(cases, seed, val_fraction, test_fraction)
    datalist = {
        split: [{"case": c, "image": f"{c}/ct.nii.gz", "label": f"{c}/label.nii.gz"} for c in splits[split]]
        for split in SPLITS
    }
    path = Path(root) / "datalist.json"
    path.write_text(json.dumps(datalist, indent=2) + "\n")
    return path


def cached_split(
    datalist: str, split: str, cached_transform: Transform, cache_dir: str, transform: Transform | None = None
) -> Dataset:
    """The cases of one `split` of `datalist`: `cached_transform` once, cached in `cache_dir` across runs, then `transform`.

    The cache holds what `cached_transform` returns (the compact int16/uint8 volumes of
    `configs/common.json#stored_preprocessing`); `transform` (intensity scaling, label channels,
    random patches) runs at every load, so no float32 copy reaches the disk.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    data = load_decathlon_datalist(datalist, True, split)
    cached = PersistentDataset(data, transform=cached_transform, cache_dir=cache_dir, hash_transform=pickle_hashing)
    return Dataset(cached, transform=Compose([transform or Compose(), plain_tensors]))


def plain_tensors(item: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
    """`item` with its MetaTensors as plain tensors, as the cache returns them: batches carry no meta data."""
    return {k: v.as_tensor() if isinstance(v, MetaTensor) else v for k, v in item.items()}
