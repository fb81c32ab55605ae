"""Evaluation: the autoencoder and generation evaluations, their data, features and metrics, the quality filter, adherence."""

from scripts.evaluation.autoencoder import Reconstructor, evaluate_autoencoder, model_grid
from scripts.evaluation.data import SampleToGrid, reference_items, sample_items, stack_images
from scripts.evaluation.features import make_feature_network
from scripts.evaluation.generation import evaluate_generation
from scripts.evaluation.quality import judge_images

__all__ = [
    "Reconstructor",
    "SampleToGrid",
    "evaluate_autoencoder",
    "evaluate_generation",
    "judge_images",
    "make_feature_network",
    "model_grid",
    "reference_items",
    "sample_items",
    "stack_images",
]
