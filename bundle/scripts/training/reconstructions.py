"""Autoencoder reconstructions of a data set, beside its originals, for a segmenter that labels decoded CTs.

Every synthetic CT is decoded by the autoencoder, which draws fine structures (the spinal canal,
about 3 voxels wide at 3.5 mm) less sharply than the CTs it was trained on. A segmenter trained on
the originals alone then misses them in samples; trained on originals and reconstructions together,
it labels both, with the originals' label maps as ground truth for each.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from scripts.bundle_config import load_bundle_config
from scripts.data.volumes import to_hu, write_nifti
from scripts.networks.checkpoint import load_checkpoint
from scripts.networks.loading import load_autoencoder
from scripts.training.engines import ReconstructionInferer

logger = logging.getLogger(__name__)

#: Datalist splits that get reconstructions.
SPLITS = ("training", "validation", "test")

#: Suffix of a reconstruction's case name.
RECONSTRUCTED = "-reconstructed"

#: File in the output folder naming the autoencoder its reconstructions come from.
SOURCE_FILE = "reconstructions.json"


def _claim_output(target: Path, autoencoder: str) -> None:
    """Record which autoencoder (by SHA-256) writes into `target`; refuse a folder another autoencoder wrote, whose
    reconstructions a resumed run would otherwise keep."""
    digest = hashlib.sha256(Path(autoencoder).read_bytes()).hexdigest()
    source = target / SOURCE_FILE
    if source.is_file():
        recorded = json.loads(source.read_text())["autoencoder_sha256"]
        if recorded != digest:
            raise FileExistsError(
                f"out {target} holds reconstructions of another autoencoder than {autoencoder}; choose another out "
                "or remove that folder"
            )
        return
    target.mkdir(parents=True, exist_ok=True)
    source.write_text(json.dumps({"autoencoder": str(autoencoder), "autoencoder_sha256": digest}, indent=2))


def _write_atomically(volume: np.ndarray, affine: np.ndarray, path: Path) -> None:
    """Write a NIfTI under a temporary name, then rename it, so an interrupted run leaves no truncated file."""
    partial = path.with_name(f"partial-{path.name}")
    write_nifti(volume, affine, partial)
    partial.replace(path)


def _reconstruct_case(
    item: dict, preprocessing: Callable, autoencoder: torch.nn.Module, hu_window: Sequence[float], out: Path
) -> None:
    """Write `out/label.nii.gz` and `out/ct.nii.gz` (the reconstruction in HU) of one case, on the working grid."""
    if "label" not in item:
        raise ValueError("the case has no label map, and the segmenter needs one to learn from its reconstruction")
    data = preprocessing(item)
    device = next(autoencoder.parameters()).device
    with torch.no_grad():
        reconstruction = ReconstructionInferer()(data["image"][None].to(device), autoencoder)
    affine = np.asarray(data["image"].affine)
    _write_atomically(np.asarray(data["label"][0]).astype(np.uint8), affine, out / "label.nii.gz")
    _write_atomically(to_hu(reconstruction[0, 0], hu_window), affine, out / "ct.nii.gz")


def write_reconstructions(data: str, autoencoder: str, out: str, device: str = "cpu") -> Path:
    """Reconstruct every case of `data` (a folder with datalist.json) with the autoencoder at `autoencoder`; write
    `out/<case>-reconstructed/{ct,label}.nii.gz` on its working grid and `out/datalist.json`, whose splits list each
    original (by absolute path) and its reconstruction.

    Cases already reconstructed in `out` are kept, so an interrupted run goes on where it stopped (a folder another
    autoencoder wrote is refused); a case that cannot be read or has no label map is logged and left out, and the
    others go on.
    """
    source, target = Path(data).resolve(), Path(out)
    datalist = source / "datalist.json"
    if not datalist.is_file():
        raise FileNotFoundError(f"data: no datalist.json in {source}")
    record = load_checkpoint(autoencoder, ("autoencoder_record",))["autoencoder_record"]
    _claim_output(target, autoencoder)
    grid = {"grid_size": list(record["image_size"])}
    preprocessing = load_bundle_config(["common.json"], grid).get_parsed_content("preprocessing")
    network = load_autoencoder(autoencoder, device)
    listed = json.loads(datalist.read_text())
    combined, failed = {}, []
    for split in (s for s in SPLITS if listed.get(s)):
        combined[split] = []
        for listed_item in tqdm(listed[split], desc=f"reconstructions ({split})", unit="case"):
            item = {**listed_item, **{k: str(source / listed_item[k]) for k in ("image", "label") if k in listed_item}}
            case = f"{listed_item.get('case', Path(listed_item['image']).parent.name)}{RECONSTRUCTED}"
            folder = target / case
            try:
                if not ((folder / "ct.nii.gz").is_file() and (folder / "label.nii.gz").is_file()):
                    _reconstruct_case(item, preprocessing, network, record["hu_window"], folder)
            except Exception as e:  # one unreadable case must not stop the others; it is reported below
                logger.error("reconstructions: %s failed: %s", item["image"], e)
                failed.append(item["image"])
                continue
            combined[split] += [item, {"case": case, "image": f"{case}/ct.nii.gz", "label": f"{case}/label.nii.gz"}]
    (target / "datalist.json").write_text(json.dumps(combined, indent=2))
    count = sum(len(items) for items in combined.values()) // 2
    logger.info("wrote the reconstructions of %d cases and their datalist to %s", count, target)
    if failed:
        logger.warning("reconstructions: %d cases failed and are left out of the datalist: %s", len(failed), failed)
    return target / "datalist.json"
