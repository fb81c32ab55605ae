"""Benchmark: one epoch of data loading with the bundle's preprocessing, without and with the persistent cache.

Usage (from the repository root): .venv/bin/python bench/preprocess_cache.py [--cases 8] [--size 128] [--grid 64]
Prints seconds per epoch for plain `Dataset`, for the first (cache-filling) and a warm `PersistentDataset` epoch,
and the speed-up of the warm cache.
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bundle"))

from monai.data import DataLoader, Dataset, PersistentDataset, load_decathlon_datalist  # noqa: E402
from monai.data.utils import pickle_hashing  # noqa: E402

from scripts.phantoms.thorax import write_phantoms  # noqa: E402
from scripts.transforms.preprocess import preprocessing_chain  # noqa: E402


def epoch_seconds(dataset) -> float:
    """Wall time to load every item once through a single-process DataLoader."""
    start = time.perf_counter()
    for _ in DataLoader(dataset, batch_size=1, num_workers=0):
        pass
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=8)
    parser.add_argument("--size", type=int, default=128, help="in-plane voxels of the phantoms")
    parser.add_argument("--grid", type=int, default=64, help="working grid")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        datalist = write_phantoms(f"{tmp}/data", n=args.cases, size=args.size, seed=0, val_fraction=0, test_fraction=0)
        data = load_decathlon_datalist(str(datalist), True, "training")
        chain, _ = preprocessing_chain(args.grid)
        plain = epoch_seconds(Dataset(data, chain))
        cached = PersistentDataset(data, chain, cache_dir=f"{tmp}/cache", hash_transform=pickle_hashing)
        filling = epoch_seconds(cached)
        warm = epoch_seconds(cached)
    print(f"{args.cases} phantoms of {args.size} in-plane voxels, working grid {args.grid}^3")
    print(f"no cache:            {plain:7.2f} s/epoch")
    print(f"cache, first epoch:  {filling:7.2f} s/epoch")
    print(f"cache, warm epoch:   {warm:7.2f} s/epoch")
    print(f"speed-up (no cache / warm cache): {plain / warm:.1f}x")


if __name__ == "__main__":
    main()
