"""Weight files written before the US spelling load under today's record names."""

import torch

from helpers import BUNDLE
from scripts.networks.checkpoint import load_checkpoint, upgrade_record
from scripts.networks.loading import load_controlnet


def test_old_record_keys_and_channel_names_are_renamed():
    old = {"network": {"channels": [8]}, "tumour_loss_weight": 20.0, "condition_channels": ["tumour", "lungs"]}
    assert upgrade_record(old) == {
        "network": {"channels": [8]},
        "tumor_loss_weight": 20.0,
        "condition_channels": ["tumor", "lungs"],
    }
    assert upgrade_record(upgrade_record(old)) == upgrade_record(old)


def test_a_checkpoint_written_with_old_names_loads_with_new_ones(tmp_path):
    path = tmp_path / "autoencoder.pt"
    torch.save({"autoencoder": {}, "autoencoder_record": {"tumour_loss_weight": 5.0, "image_size": [32, 32, 32]}}, path)
    record = load_checkpoint(path, ("autoencoder", "autoencoder_record"))["autoencoder_record"]
    assert record == {"tumor_loss_weight": 5.0, "image_size": [32, 32, 32]}


def test_shipped_demo_controlnet_loads_with_new_names():
    stored = torch.load(BUNDLE / "models" / "demo" / "controlnet.pt", map_location="cpu", weights_only=True)[
        "controlnet_record"
    ]
    _, record = load_controlnet(BUNDLE / "models" / "demo" / "controlnet.pt")
    assert record["tumor_loss_weight"] == stored.get("tumour_loss_weight", stored.get("tumor_loss_weight"))
    assert record["condition_channels"] == ["tumor", "lungs"] and "tumour_loss_weight" not in record
