"""Training: the autoencoder engine, losses, prepare-batch classes, latents, resuming, and DDP helpers, as configs name them."""

from scripts.training.distributed import (
    check_replicas,
    data_parallel,
    data_sampler,
    finish,
    init,
    is_distributed,
    is_main_process,
    mean_across_ranks,
    rank,
)
from scripts.training.engines import AutoencoderTrainer, ReconstructionInferer, loss_terms
from scripts.training.latents import SampleLatentd, encode_dataset, scale_factor
from scripts.training.losses import AutoencoderLoss, make_perceptual_loss, weighted_mse
from scripts.training.prepare_batch import RectifiedFlowPrepareBatch, TumorWeightedPrepareBatch
from scripts.training.resume import ResumeFromCheckpoint

__all__ = [
    "AutoencoderLoss",
    "AutoencoderTrainer",
    "ReconstructionInferer",
    "RectifiedFlowPrepareBatch",
    "ResumeFromCheckpoint",
    "SampleLatentd",
    "TumorWeightedPrepareBatch",
    "check_replicas",
    "data_parallel",
    "data_sampler",
    "encode_dataset",
    "finish",
    "init",
    "is_distributed",
    "is_main_process",
    "loss_terms",
    "make_perceptual_loss",
    "mean_across_ranks",
    "rank",
    "scale_factor",
    "weighted_mse",
]
