"""MONAI transforms of the preprocessing chain and the ControlNet's conditioning mask, as the configs name them."""

from scripts.transforms.alignment import CropToLungBoxd
from scripts.transforms.body_mask import RemoveTabled
from scripts.transforms.conditioning import CONDITION_CHANNELS, ConditioningMaskd
from scripts.transforms.label_channels import LabelToChannelsd
from scripts.transforms.patches import RandTrainingPatchd
from scripts.transforms.storage import CompactVolumesd

__all__ = [
    "CONDITION_CHANNELS",
    "CompactVolumesd",
    "ConditioningMaskd",
    "CropToLungBoxd",
    "LabelToChannelsd",
    "RandTrainingPatchd",
    "RemoveTabled",
]
