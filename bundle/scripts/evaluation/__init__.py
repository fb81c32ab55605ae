"""Evaluation: the autoencoder and generation evaluations, their data, features and metrics, the quality filter, adherence."""

from scripts.evaluation.autoencoder import Reconstructor, evaluate_autoencoder, model_grid
from scripts.evaluation.data import reference_items, sample_grid, sample_items, stack_images
from scripts.evaluation.features import make_feature_network
from scripts.evaluation.generation import evaluate_generation
from scripts.evaluation.quality import judge_files, sample_files

__all__ = [
    "Reconstructor",
    "evaluate_autoencoder",
    "evaluate_generation",
    "judge_files",
    "make_feature_network",
    "model_grid",
    "reference_items",
    "sample_files",
    "sample_grid",
    "sample_items",
    "stack_images",
]
