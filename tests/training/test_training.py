"""Training stages through `python -m monai.bundle run`: weights change, checkpoints describe themselves, runs resume."""

import re
import shutil

import pytest
import torch
from monai.networks.nets import AutoencoderKL, PatchDiscriminator

from helpers import TINY, run_bundle, train_in_process, training_overrides
from scripts.networks.loading import load_autoencoder, load_diffusion, trainable_autoencoder
from scripts.training.engines import AutoencoderTrainer
from scripts.training.latents import SampleLatentd, scale_factor
from scripts.training.losses import AutoencoderLoss, weighted_l1
from scripts.training.resume import ResumeFromCheckpoint, training_checkpoints

#: A two-level AutoencoderKL small enough to build in a test.
TINY_AUTOENCODER = {
    "spatial_dims": 3,
    "in_channels": 1,
    "out_channels": 1,
    "channels": [8, 8],
    "latent_channels": 3,
    "num_res_blocks": 1,
    "norm_num_groups": 4,
    "attention_levels": [False, False],
}


def _changed(trained_weights: dict, initial: dict) -> float:
    """Fraction of floating-point tensors that training changed."""
    floats = [k for k, v in initial.items() if v.is_floating_point()]
    return sum(not torch.equal(trained_weights[k].cpu(), initial[k].cpu()) for k in floats) / len(floats)


def test_autoencoder_trains_and_its_checkpoint_rebuilds_it(trained):
    autoencoder = load_autoencoder(trained.dir / "autoencoder.pt")
    record = torch.load(trained.dir / "autoencoder.pt", weights_only=True)["autoencoder_record"]
    assert record["network"]["channels"] == TINY["autoencoder_channels"]
    assert record["image_size"] == [TINY["grid_size"]] * 3 and record["hu_window"] == [-1000, 1000]
    assert record["image_spacing_mm"] == [448.0 / 32, 448.0 / 32, 352.0 / 32]
    assert _changed(autoencoder.state_dict(), trained.initial_autoencoder) > 0.9


def test_training_state_checkpoint_holds_optimizers_and_discriminator(trained):
    (latest,) = training_checkpoints(trained.dir, "autoencoder")
    assert latest.name == "autoencoder_checkpoint_epoch=2.pt"
    state = torch.load(latest, map_location="cpu", weights_only=True)
    assert set(state) == {"autoencoder", "discriminator", "g_optimizer", "d_optimizer", "trainer"}
    assert state["trainer"]["iteration"] == 2 * state["trainer"]["epoch_length"]
    assert len(state["d_optimizer"]["state"]) > 0, "the discriminator trained in the adversarial epoch"


def test_decoder_fine_tune_keeps_the_encoder_and_writes_its_own_file(trained, tmp_path, phantom_dir):
    """finetune_decoder.json: the latents (and so the diffusion and ControlNet) stay valid, the original stays."""
    shutil.copy(trained.dir / "autoencoder.pt", tmp_path / "autoencoder.pt")
    overrides = {**training_overrides(phantom_dir, tmp_path), "max_epochs": 1}
    initial = train_in_process(
        ["train_autoencoder.json", "demo.json", "finetune_decoder.json"], "autoencoder", overrides
    )
    original = load_autoencoder(tmp_path / "autoencoder.pt").state_dict()
    assert all(torch.equal(initial[k], original[k]) for k in original), "training starts from autoencoder_init_path"
    checkpoint = torch.load(tmp_path / "autoencoder_finetuned.pt", weights_only=True)
    tuned = checkpoint["autoencoder"]
    encoder = [k for k in original if k.startswith(("encoder.", "quant_conv"))]
    decoder = [k for k in original if k.startswith("decoder.") and original[k].is_floating_point()]
    assert all(torch.equal(tuned[k], original[k]) for k in encoder)
    assert sum(not torch.equal(tuned[k], original[k]) for k in decoder) / len(decoder) > 0.9
    assert checkpoint["autoencoder_record"]["tumor_loss_weight"] == 20.0
    assert [p.name for p in training_checkpoints(tmp_path, "autoencoder_finetuned")] == [
        "autoencoder_finetuned_checkpoint_epoch=1.pt"
    ]


def test_autoencoder_trainer_weighs_the_l1_inside_the_tumor():
    """The trainer finds the tumor in the batch's `masks` and the reported L1 counts its voxels 20 times."""
    autoencoder = AutoencoderKL(**TINY_AUTOENCODER)
    discriminator = PatchDiscriminator(3, channels=4, in_channels=1, num_layers_d=1)
    masks = torch.zeros(1, 4, 16, 16, 16)
    masks[:, 1, 4:8, 4:8, 4:8] = 1.0  # gtv_other
    batch = {"image": torch.rand(1, 1, 16, 16, 16) * 2 - 1, "masks": masks}
    trainer = AutoencoderTrainer(
        device="cpu",
        max_epochs=1,
        train_data_loader=[batch],
        autoencoder=autoencoder,
        discriminator=discriminator,
        g_optimizer=torch.optim.SGD(autoencoder.parameters(), lr=0.0),
        d_optimizer=torch.optim.SGD(discriminator.parameters(), lr=0.0),
        loss=AutoencoderLoss(tumor_l1_weight=20.0),
        mask_channels=["gtv_1", "gtv_other", "lungs", "body"],
        adversarial_warmup_epochs=1,
    )
    trainer.run()
    output = trainer.state.output
    weight = 1.0 + 19.0 * masks[:, 1:2]
    assert output["l1"] == pytest.approx(weighted_l1(output["pred"], batch["image"], weight).item(), rel=1e-5)
    assert output["l1"] != pytest.approx((output["pred"] - batch["image"]).abs().mean().item(), rel=1e-3)


def test_init_weights_of_another_architecture_are_named(trained):
    kwargs = {**TINY_AUTOENCODER, "channels": [4, 4]}  # not the trained one's [8, 16, 16]
    with pytest.raises(ValueError, match="autoencoder_init_path"):
        trainable_autoencoder(kwargs, trained.dir / "autoencoder.pt")


def test_diffusion_trains_and_records_scale_factor_and_schedule(trained):
    unet, record = load_diffusion(trained.dir / "diffusion.pt")
    assert _changed(unet.state_dict(), trained.initial_diffusion) > 0.9
    assert record["latent_shape"] == [3, 8, 8, 8]
    assert record["noise_schedule"]["clip_sample"] is False
    assert 0.05 < record["scale_factor"] < 50.0
    (latest,) = training_checkpoints(trained.dir, "diffusion")
    state = torch.load(latest, map_location="cpu", weights_only=True)
    assert state["trainer"]["iteration"] == 3 * state["trainer"]["epoch_length"]
    assert set(state) == {"diffusion", "optimizer", "trainer"}


def test_scaled_latents_have_unit_variance():
    torch.manual_seed(123)
    latents = [{"z_mu": 4.0 * torch.randn(3, 6, 6, 6), "z_sigma": torch.full((3, 6, 6, 6), 0.5)} for _ in range(8)]
    factor = scale_factor(latents)
    sampler = SampleLatentd(scale_factor=factor)
    sampler.set_random_state(0)
    z = torch.stack([sampler(d)["image"] for d in latents])
    assert abs(float(z.std()) - 1.0) < 0.05


def test_resume_continues_at_the_next_epoch_and_skips_broken_checkpoints(tmp_path, phantom_dir):
    common = {
        **training_overrides(phantom_dir, tmp_path),
        "adversarial_warmup_epochs": 0,
        "val_interval": 5,
        "patch_size": [24, 24, 24],
    }
    run_bundle(["train_autoencoder.json", "demo.json"], {**common, "max_epochs": 1})
    # A run killed while writing its next checkpoint leaves a truncated file behind.
    (tmp_path / "autoencoder_checkpoint_epoch=2.pt").write_bytes(b"truncated")
    done = run_bundle(["train_autoencoder.json", "demo.json"], {**common, "max_epochs": 3})
    log = done.stdout + done.stderr
    assert "skipping unreadable checkpoint" in log
    assert re.search(r"resumed from .*autoencoder_checkpoint_epoch=1\.pt at epoch 1 of 3", log)
    assert "Epoch: 1/3" not in log and "Epoch: 2/3" in log and "Epoch: 3/3" in log
    state = torch.load(tmp_path / "autoencoder_checkpoint_epoch=3.pt", map_location="cpu", weights_only=True)
    assert state["trainer"]["iteration"] == 3 * 1, "three epochs of one batch each, not four"
    record = torch.load(tmp_path / "autoencoder.pt", map_location="cpu", weights_only=True)["autoencoder_record"]
    assert record["patch_size"] == [24, 24, 24], "a patch-trained run resumes as one"


def test_resume_disabled_starts_over(tmp_path):
    handler = ResumeFromCheckpoint(str(tmp_path), "autoencoder", load_dict={}, enabled=False)
    from ignite.engine import Engine

    engine = Engine(lambda e, b: None)
    handler.attach(engine)
    assert not engine.has_event_handler(handler)


def test_missing_autoencoder_is_a_clear_error(tmp_path, phantom_dir):
    done = run_bundle(
        ["train_diffusion.json", "demo.json"],
        {
            **TINY,
            "dataset_dir": str(phantom_dir),
            "ckpt_dir": str(tmp_path),
            "cache_dir": str(tmp_path),
            "max_epochs": 1,
        },
        check=False,
    )
    assert done.returncode != 0
    assert f"checkpoint not found: {tmp_path}/autoencoder.pt" in done.stdout + done.stderr


@pytest.mark.parametrize(
    "bad", [{"adversarial_warmup_epochs": -1}, {"tumor_loss_weight": 0.5}, {"train_encoder": False}]
)
def test_bad_training_parameter_is_named(tmp_path, phantom_dir, bad):
    done = run_bundle(
        ["train_autoencoder.json", "demo.json"],
        {
            **TINY,
            "dataset_dir": str(phantom_dir),
            "ckpt_dir": str(tmp_path),
            "cache_dir": str(tmp_path),
            "max_epochs": 1,
            **bad,
        },
        check=False,
    )
    assert done.returncode != 0 and next(iter(bad)) in done.stdout + done.stderr
