"""Latents of the frozen autoencoder for diffusion training: encoded once, sampled every epoch, scaled.

Encoding once (mean and sigma of the posterior) instead of every iteration spares the encoder's
cost at every step; `SampleLatentd` still draws a fresh latent from the posterior each time.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, RandomizableTransform
from tqdm import tqdm

from scripts.networks.tile_plan import AUTO, planned_tile
from scripts.networks.tiling import TiledEncoder
from scripts.training.distributed import mean_across_ranks, rank

logger = logging.getLogger(__name__)


@torch.no_grad()
def encode_dataset(
    autoencoder: torch.nn.Module,
    loader: Iterable,
    device: torch.device | str,
    keep_keys: Sequence[str] = (),
    encode_tile: int | Sequence[int] | str | None = AUTO,
) -> list[dict[str, torch.Tensor]]:
    """Posterior mean and sigma of every image in `loader`, one dict per image on the CPU, with `keep_keys` carried along.

    With `encode_tile` (latent voxels; "auto": when a whole batch would not fit in free memory), each image is
    encoded on its own in tiles (`TiledEncoder`), in bounded memory and with the same result up to rounding.
    """
    autoencoder.eval()
    latents = []
    for batch in tqdm(loader, desc="encoding latents", unit="batch"):
        images = batch["image"].to(device)
        tile = planned_tile(encode_tile, autoencoder, images.shape[:1] + images.shape[2:], device)
        if tile is None:
            z_mu, z_sigma = autoencoder.encode(images)
        else:
            z_mu, z_sigma = (torch.cat(parts) for parts in zip(*map(TiledEncoder(autoencoder, tile), images.split(1))))
        for i, (m, s) in enumerate(zip(z_mu, z_sigma)):
            latents.append(
                {"z_mu": m.cpu(), "z_sigma": s.cpu(), **{k: torch.as_tensor(batch[k][i]) for k in keep_keys}}
            )
    if not latents:
        raise ValueError("no images to encode: the training split of the datalist is empty")
    return latents


def scale_factor(latents: list[dict[str, torch.Tensor]], seed: int = 0) -> float:
    """1 / std of latents sampled from every training posterior, so scaled latents have unit variance."""
    generator = torch.Generator().manual_seed(seed)
    samples = torch.stack(
        [d["z_mu"] + d["z_sigma"] * torch.randn(d["z_mu"].shape, generator=generator) for d in latents]
    )
    factor = 1.0 / float(samples.std())
    logger.info("scale factor %.4f from %d latents", factor, len(latents))
    return factor


def dataset_scale_factor(latents: list[dict[str, torch.Tensor]], seed: int = 0) -> float:
    """The scale factor of the whole training set: each rank's `scale_factor` (seeded `seed + rank`), averaged over ranks."""
    return mean_across_ranks(scale_factor(latents, seed=seed + rank()))


def latent_shape(latents: list[dict[str, torch.Tensor]]) -> list[int]:
    """The shape (channels, X, Y, Z) of one encoded latent."""
    return list(latents[0]["z_mu"].shape)


class SampleLatentd(RandomizableTransform, MapTransform):
    """Draw `z = (mu + sigma * eps) * scale_factor` into `output_key` from the posterior stored in the data."""

    def __init__(
        self,
        scale_factor: float,
        keys: KeysCollection = ("z_mu", "z_sigma"),
        output_key: str = "image",
    ) -> None:
        MapTransform.__init__(self, keys)
        RandomizableTransform.__init__(self, prob=1.0)
        self.scale_factor = scale_factor
        self.output_key = output_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        mu_key, sigma_key = self.keys
        eps = torch.as_tensor(self.R.standard_normal(d[mu_key].shape), dtype=d[mu_key].dtype)
        d[self.output_key] = (d[mu_key] + d[sigma_key] * eps) * self.scale_factor
        return d
