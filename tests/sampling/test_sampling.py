"""Sampling: scale-factor round trip, output geometry and HU, determinism per seed, no silent overwrite."""

import nibabel as nib
import numpy as np
import pytest
import torch

from helpers import TINY, run_bundle
from scripts.data.volumes import to_hu
from scripts.networks.loading import load_autoencoder, load_diffusion
from scripts.networks.schedules import resolve_sampling
from scripts.sampling.sampler import LatentDiffusionSampler, make_scheduler
from scripts.sampling.writing import write_samples


@pytest.fixture(scope="module")
def sampler(trained):
    unet, record = load_diffusion(trained.dir / "diffusion.pt")
    return LatentDiffusionSampler(load_autoencoder(trained.dir / "autoencoder.pt"), unet, record, "ddim", 5)


def test_decoding_divides_by_the_scale_factor(sampler):
    image = torch.rand((1, 1, 32, 32, 32), generator=torch.Generator().manual_seed(0)) * 2 - 1
    z_mu, _ = sampler.autoencoder.encode(image)
    scaled = LatentDiffusionSampler(sampler.autoencoder, sampler.unet, dict(sampler.record, scale_factor=3.7))
    expected = to_hu(sampler.autoencoder.decode(z_mu)[0, 0], sampler.record["hu_window"])
    error = np.abs(scaled.decode(z_mu * 3.7)[0].astype(int) - expected)
    assert error.max() <= 1, "latents are divided by the scale factor before decoding (up to HU rounding)"
    assert np.abs(scaled.decode(z_mu)[0].astype(int) - expected).max() > 10


def test_samples_have_the_grid_spacing_and_hu_range(sampler, tmp_path):
    (path,) = write_samples(sampler, str(tmp_path), seeds=[3])
    image = nib.load(path)
    assert path.name == "sample_seed3_ct.nii.gz" and (tmp_path / "sample_seed3.png").is_file()
    assert image.shape == (TINY["grid_size"],) * 3 and image.get_data_dtype() == np.int16
    assert np.allclose(np.diag(image.affine)[:3], [448.0 / 32, 448.0 / 32, 352.0 / 32])
    assert np.allclose(image.affine[:3, :3] @ (np.array(image.shape) - 1) / 2 + image.affine[:3, 3], 0), "centred"
    hu = np.asanyarray(image.dataobj)
    assert hu.min() >= -1000 and hu.max() <= 1000


def test_same_seed_same_volume_whatever_the_batch(sampler):
    alone = sampler.sample([7])[0]
    assert np.array_equal(alone, sampler.sample([7])[0]), "the same seed gives the same volume"
    batched = sampler.sample([6, 7])
    difference = np.abs(alone.astype(int) - batched[1])
    assert difference.max() <= 2, "batching changes a sample only by float rounding"
    assert np.abs(batched[0].astype(int) - batched[1]).mean() > 20, "other seeds give other volumes"


def test_ddpm_uses_every_training_step(sampler):
    ddpm = LatentDiffusionSampler(sampler.autoencoder, sampler.unet, sampler.record, "ddpm", 10)
    assert len(ddpm.scheduler.timesteps) == 1000


def test_auto_sampling_picks_the_fast_sampler_of_the_model_schedule(sampler):
    default = LatentDiffusionSampler(sampler.autoencoder, sampler.unet, sampler.record)
    assert (default.sampler_name, default.num_inference_steps, len(default.scheduler.timesteps)) == ("ddim", 25, 25)
    rflow = {"schedule_type": "rflow", "noise_schedule": {"num_train_timesteps": 1000}}
    assert resolve_sampling(rflow) == ("rflow", 10) and resolve_sampling(rflow, "auto", 4) == ("rflow", 4)
    assert resolve_sampling(sampler.record, "ddpm", 10) == ("ddpm", 1000)
    with pytest.raises(ValueError, match=r"sampler must be one of \['auto', 'ddim', 'ddpm', 'rflow'\], got 'euler'"):
        resolve_sampling(rflow, "euler")
    with pytest.raises(ValueError, match="sampler 'ddim' cannot sample a model trained with the 'rflow' schedule"):
        resolve_sampling(rflow, "ddim")


@pytest.mark.parametrize(
    "sampler_name, steps, match",
    [("euler", 10, "sampler"), ("ddim", 0, "num_inference_steps"), ("ddim", 1001, "num_inference_steps")],
)
def test_bad_sampling_parameters_are_named(sampler_name, steps, match):
    schedule = {"num_train_timesteps": 1000, "schedule": "scaled_linear_beta", "beta_start": 0.0015, "beta_end": 0.0195}
    with pytest.raises(ValueError, match=match):
        make_scheduler(sampler_name, schedule, steps)


def test_existing_samples_are_not_overwritten(sampler, tmp_path):
    write_samples(sampler, str(tmp_path), seeds=[0])
    before = (tmp_path / "sample_seed0_ct.nii.gz").read_bytes()
    with pytest.raises(FileExistsError, match="sample_seed0_ct.nii.gz"):
        write_samples(sampler, str(tmp_path), seeds=[0, 1])
    assert (tmp_path / "sample_seed0_ct.nii.gz").read_bytes() == before
    assert not (tmp_path / "sample_seed1_ct.nii.gz").exists(), "nothing is written when a name is taken"


def test_inference_config_samples_from_a_model_dir(trained, tmp_path):
    overrides = {"model_dir": str(trained.dir), "output_dir": str(tmp_path), "num_samples": 2, "batch_size": 2}
    run_bundle(["inference.json"], {**overrides, "seed": 4, "num_inference_steps": 3})
    volumes = [np.asanyarray(nib.load(tmp_path / f"sample_seed{s}_ct.nii.gz").dataobj) for s in (4, 5)]
    assert volumes[0].shape == (TINY["grid_size"],) * 3 and not np.array_equal(*volumes)
