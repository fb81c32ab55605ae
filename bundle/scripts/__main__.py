"""Data tools of the bundle, as a fire CLI: `python -m scripts <command> --help`."""

import logging
from pathlib import Path

import fire

from scripts.dicom.export import export_dicom
from scripts.dicom.ingest import ingest
from scripts.evaluation.quality import write_quality_report
from scripts.networks.export import export_networks
from scripts.phantoms.dicom_tree import write_phantom_dicom
from scripts.phantoms.thorax import write_phantoms
from scripts.sampling.cohort import run_cohort
from scripts.training.reconstructions import write_reconstructions
from scripts.transforms.preprocess import preprocess_case


def phantoms(
    out: str,
    n: int = 8,
    size: int | list[int] = 128,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.05,
    dicom: bool = False,
) -> Path:
    """Write `n` phantom cases to `out`: NIfTI cases with datalist.json, or with `--dicom` a DICOM tree for `ingest`.

    Args:
        out: output folder; existing case folders are kept, never overwritten.
        n: number of cases.
        size: in-plane voxels over the 400 to 480 mm field of view, slices at least 3 mm apart; or per axis,
            `--size "[512,512,128]"`: nx by ny voxels over the field of view and nz slices over the scanned length.
        seed: the same seed gives the same cases, as NIfTI or as DICOM.
        val_fraction: share of the validation split in datalist.json (NIfTI only: `ingest` splits a DICOM tree).
        test_fraction: share of the test split in datalist.json (NIfTI only).
        dicom: write `<out>/PHANTOM-XXX/<study>/<series>/*.dcm` (CT series, RTSTRUCT, SEG) in the NSCLC-Radiomics layout.
    """
    if dicom:
        return write_phantom_dicom(out, n=n, size=size, seed=seed)
    return write_phantoms(out, n=n, size=size, seed=seed, val_fraction=val_fraction, test_fraction=test_fraction)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s - %(name)s - %(levelname)s - %(message)s")
    fire.Fire(
        {
            "phantoms": phantoms,
            "ingest": ingest,
            "preprocess": preprocess_case,
            "quality_filter": write_quality_report,
            "export_dicom": export_dicom,
            "export": export_networks,
            "cohort": run_cohort,
            "reconstructions": write_reconstructions,
        }
    )
