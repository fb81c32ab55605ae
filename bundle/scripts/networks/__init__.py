"""Networks: self-describing checkpoints, loading and building them, ControlNet wiring, noise schedules, torch.export."""

from scripts.networks.checkpoint import Record
from scripts.networks.controlnet import ControlledUNet, controlnet_from_unet, controlnet_kwargs, latent_downsampling
from scripts.networks.loading import (
    AUTOENCODER_FILE,
    CONTROLNET_FILE,
    DIFFUSION_FILE,
    SEGMENTATION_FILE,
    TUMOR_MODEL_FILES,
    default_model_dir,
    load_autoencoder,
    load_controlnet,
    load_diffusion,
    load_segmentation,
    trainable_autoencoder,
    trainable_segmenter,
)
from scripts.networks.schedules import controlnet_scheduler, training_scheduler
from scripts.networks.tiling import TiledDecoder, TiledEncoder, tiled_reconstruct

__all__ = [
    "AUTOENCODER_FILE",
    "CONTROLNET_FILE",
    "DIFFUSION_FILE",
    "SEGMENTATION_FILE",
    "TUMOR_MODEL_FILES",
    "ControlledUNet",
    "Record",
    "TiledDecoder",
    "TiledEncoder",
    "controlnet_from_unet",
    "controlnet_kwargs",
    "controlnet_scheduler",
    "default_model_dir",
    "latent_downsampling",
    "load_autoencoder",
    "load_controlnet",
    "load_diffusion",
    "load_segmentation",
    "tiled_reconstruct",
    "trainable_autoencoder",
    "trainable_segmenter",
    "training_scheduler",
]
