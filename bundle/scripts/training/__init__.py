"""Training: the autoencoder engine, losses, the ControlNet's contrastive pair, prepare-batch classes, latents, resuming, and DDP helpers, as configs name them."""

from scripts.training.contrastive import TumorContrastiveLoss, TumorContrastivePair, contrastive_network
from scripts.training.distributed import (
    check_replicas,
    data_parallel,
    data_sampler,
    finish,
    init,
    is_distributed,
    is_main_process,
    local_device,
)
from scripts.training.engines import AutoencoderTrainer, ReconstructionInferer, loss_terms
from scripts.training.latents import SampleLatentd, dataset_scale_factor, encode_dataset, latent_shape
from scripts.training.losses import AutoencoderLoss, make_perceptual_loss
from scripts.training.prepare_batch import (
    RectifiedFlowPrepareBatch,
    TumorWeightedPrepareBatch,
    noise_prepare_batch,
)
from scripts.training.resume import ResumeFromCheckpoint

__all__ = [
    "AutoencoderLoss",
    "AutoencoderTrainer",
    "ReconstructionInferer",
    "RectifiedFlowPrepareBatch",
    "ResumeFromCheckpoint",
    "SampleLatentd",
    "TumorContrastiveLoss",
    "TumorContrastivePair",
    "TumorWeightedPrepareBatch",
    "check_replicas",
    "contrastive_network",
    "data_parallel",
    "data_sampler",
    "dataset_scale_factor",
    "encode_dataset",
    "finish",
    "init",
    "is_distributed",
    "is_main_process",
    "latent_shape",
    "local_device",
    "loss_terms",
    "make_perceptual_loss",
    "noise_prepare_batch",
]
