"""Sampling: the latent diffusion sampler, tumor requests, tumor insertion, structures, and writing the samples, as configs name them."""

from scripts.sampling.insertion import insert_tumor
from scripts.sampling.patient_ct import read_patient_ct
from scripts.sampling.sampler import LatentDiffusionSampler
from scripts.sampling.structures import Segmenter, structure_segmenter
from scripts.sampling.tumor_request import requested_mask
from scripts.sampling.writing import sample_seeds, write_samples

__all__ = [
    "LatentDiffusionSampler",
    "Segmenter",
    "insert_tumor",
    "read_patient_ct",
    "requested_mask",
    "sample_seeds",
    "structure_segmenter",
    "write_samples",
]
