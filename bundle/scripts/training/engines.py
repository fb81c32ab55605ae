"""Ignite engines MONAI does not provide: the VAE-GAN iteration of the autoencoder, and its validation inferer.

`SupervisedTrainer` cannot train AutoencoderKL (it returns reconstruction, mu and sigma) with a
discriminator beside it, so this trainer does one VAE-GAN step per iteration. It subclasses
`monai.engines.Trainer`, so MONAI's handlers (checkpoints, stats, validation) attach unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import Any

import torch
from monai.engines import Trainer
from monai.engines.utils import IterationEvents, default_prepare_batch
from monai.inferers import Inferer
from monai.utils import CommonKeys as Keys
from torch.utils.data import DataLoader

from scripts.data.labels import tumor_channel
from scripts.networks.tile_plan import AUTO, planned_tile
from scripts.networks.tiling import tiled_reconstruct
from scripts.training.losses import AutoencoderLoss


class ReconstructionInferer(Inferer):
    """Deterministic reconstruction `decode(mu)` of an AutoencoderKL, for validation metrics on whole volumes.

    `tile` (latent voxels; "auto": only when the whole volume would not fit in free memory) encodes and decodes in
    tiles, so a patch-trained autoencoder validates on 512 x 512 x 128 volumes in bounded memory.
    """

    def __init__(self, tile: int | Sequence[int] | str | None = AUTO) -> None:
        super().__init__()
        self.tile = tile

    def __call__(self, inputs: torch.Tensor, network: torch.nn.Module, *args: Any, **kwargs: Any) -> torch.Tensor:
        tile = planned_tile(self.tile, network, inputs.shape[:1] + inputs.shape[2:], inputs.device)
        return network.reconstruct(inputs) if tile is None else tiled_reconstruct(network, inputs, tile)


class AutoencoderTrainer(Trainer):
    """One VAE-GAN step per iteration: autoencoder update, then (after the warm-up) discriminator update.

    Args:
        device: where the networks run.
        max_epochs: epochs to train.
        train_data_loader: batches of `{"image": tensor}` in [-1, 1].
        autoencoder, discriminator: the AutoencoderKL and PatchDiscriminator.
        g_optimizer, d_optimizer: their optimizers.
        loss: the weighted loss terms.
        mask_channels: names of the channels of the batches' `masks`; with them the L1 term sees
            where the tumor is (see `AutoencoderLoss.tumor_l1_weight`).
        adversarial_warmup_epochs: epochs trained without the adversarial term and discriminator,
            so the discriminator does not overpower a blurry early autoencoder.
        amp: mixed precision (CUDA only; ignored on the CPU).
        train_handlers: MONAI/ignite handlers.
    """

    def __init__(
        self,
        device: torch.device | str,
        max_epochs: int,
        train_data_loader: DataLoader,
        autoencoder: torch.nn.Module,
        discriminator: torch.nn.Module,
        g_optimizer: torch.optim.Optimizer,
        d_optimizer: torch.optim.Optimizer,
        loss: AutoencoderLoss,
        mask_channels: Sequence[str] | None = None,
        adversarial_warmup_epochs: int = 10,
        amp: bool = False,
        epoch_length: int | None = None,
        prepare_batch: Callable = default_prepare_batch,
        train_handlers: Sequence | None = None,
    ) -> None:
        amp = amp and torch.device(device).type == "cuda"
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            data_loader=train_data_loader,
            epoch_length=epoch_length,
            prepare_batch=prepare_batch,
            handlers=train_handlers,
            amp=amp,
            decollate=False,
        )
        if adversarial_warmup_epochs < 0:
            raise ValueError(f"adversarial_warmup_epochs must be >= 0, got {adversarial_warmup_epochs}")
        self.autoencoder, self.discriminator = autoencoder, discriminator
        self.g_optimizer, self.d_optimizer = g_optimizer, d_optimizer
        self.loss = loss
        self.mask_channels = list(mask_channels) if mask_channels is not None else None
        self.adversarial_warmup_epochs = adversarial_warmup_epochs
        self.network = autoencoder  # what MONAI handlers (e.g. ValidationHandler) look for

    def _autocast(self):
        return torch.autocast("cuda", dtype=torch.float16) if self.amp else nullcontext()

    def _step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(optimizer)
        else:
            loss.backward()
            optimizer.step()

    def _iteration(self, engine: AutoencoderTrainer, batchdata: dict[str, torch.Tensor]) -> dict[str, Any]:
        images, _ = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking)
        tumor = None
        if self.mask_channels is not None and "masks" in batchdata:
            tumor = tumor_channel(batchdata["masks"].to(images.device), self.mask_channels, channel_dim=1)
        adversarial = engine.state.epoch > self.adversarial_warmup_epochs
        self.autoencoder.train()
        self.discriminator.train()

        with self._autocast():
            reconstruction, z_mu, z_sigma = self.autoencoder(images)
            fake_logits = self.discriminator(reconstruction)[-1] if adversarial else None
            terms = self.loss.generator(images, reconstruction, z_mu, z_sigma, fake_logits, tumor)
        self._step(terms["total"], self.g_optimizer)
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)

        if adversarial:
            with self._autocast():  # one pass over fakes and reals: DistributedDataParallel allows one per step
                logits = self.discriminator(torch.cat([reconstruction.detach(), images]))[-1]
                d_loss = self.loss.discriminator(*logits.split(len(images)))
            self._step(d_loss, self.d_optimizer)
            terms["discriminator"] = d_loss
        if self.scaler is not None:
            self.scaler.update()
        engine.fire_event(IterationEvents.MODEL_COMPLETED)

        output = {Keys.IMAGE: images, Keys.PRED: reconstruction.detach(), Keys.LOSS: terms["total"].item()}
        output.update({k: v.item() for k, v in terms.items() if k != "total"})
        return output


def loss_terms(output: dict[str, Any]) -> dict[str, float]:
    """The scalar entries of an iteration's output (total loss and its terms), for Stats/TensorBoard handlers."""
    scalars = {k: v.item() if isinstance(v, torch.Tensor) and v.numel() == 1 else v for k, v in output.items()}
    return {k: v for k, v in scalars.items() if isinstance(v, float)}
