"""2.5D features for FID: one feature vector per slice of a volume, along each of its three axes, from a named network.

Two networks: a RadImageNet ResNet-50 from a local weights file (what MAISI reports its 2.5D FID
with), or, when the user has none, the encoder of the project's own autoencoder, as the thesis
did (it compared latent slices). Nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision

from scripts.networks.loading import load_autoencoder

#: Slicing axes of a RAS volume (x, y, z), by the plane each slice lies in.
AXES = ("sagittal", "coronal", "axial")

#: Per-channel means RadImageNet subtracts from its [0, 1] BGR inputs.
RADIMAGENET_BGR_MEAN = (0.406, 0.456, 0.485)


def volume_slices(volume: torch.Tensor, axis: int) -> torch.Tensor:
    """The slices of a channel-first volume (C, X, Y, Z) along spatial `axis`, as a batch of 2D images (N, C, H, W)."""
    return volume.movedim(1 + axis, 0).contiguous()


class AutoencoderSliceFeatures:
    """Latent-slice features from the project's autoencoder: the posterior mean, sliced along each axis, average-pooled.

    Pooling each latent slice to `pool_size` x `pool_size` keeps the coarse layout (where body and
    lungs are) while giving few enough features (channels x pool_size^2) for a covariance that a
    few dozen volumes estimate.
    """

    def __init__(self, autoencoder: torch.nn.Module, pool_size: int = 8, device: torch.device | str = "cpu") -> None:
        if pool_size < 1:
            raise ValueError(f"feature_pool_size must be at least 1, got {pool_size}")
        self.autoencoder, self.pool_size, self.device = autoencoder, pool_size, torch.device(device)
        self.name = f"autoencoder encoder (latent slices pooled to {pool_size}x{pool_size})"

    @torch.no_grad()
    def __call__(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """Features (slices, channels * pool_size^2) per axis of one image (1, X, Y, Z) in [-1, 1]."""
        z_mu, _ = self.autoencoder.encode(image[None].to(self.device))
        return {
            name: F.adaptive_avg_pool2d(volume_slices(z_mu[0], axis), self.pool_size).flatten(1).cpu()
            for axis, name in enumerate(AXES)
        }


class RadImageNetSliceFeatures:
    """ResNet-50 features of every image slice along each axis (global average pool of the last block), as MAISI's 2.5D FID.

    Slices are windowed to [0, 1], repeated to three channels and shifted by RadImageNet's BGR means.
    The weights file is a torchvision ResNet-50 state dict (optionally under `state_dict_key`).
    """

    def __init__(
        self,
        weights_path: str,
        device: torch.device | str = "cpu",
        batch_size: int = 64,
        state_dict_key: str | None = None,
    ) -> None:
        path = Path(weights_path)
        if not path.is_file():
            raise FileNotFoundError(f"feature_weights_path: no file at {path}")
        network = torchvision.models.resnet50(weights=None)
        state = torch.load(path, map_location="cpu", weights_only=True)
        try:
            network.load_state_dict(state[state_dict_key] if state_dict_key else state)
        except (KeyError, RuntimeError) as e:
            raise ValueError(f"feature_weights_path {path} is not a torchvision ResNet-50 state dict: {e}") from e
        network.fc = torch.nn.Identity()
        self.network = network.to(device).eval()
        self.device, self.batch_size = torch.device(device), batch_size
        self.mean = torch.tensor(RADIMAGENET_BGR_MEAN, device=self.device).view(1, 3, 1, 1)
        self.name = "RadImageNet ResNet-50 (global average pool of the last block)"

    @torch.no_grad()
    def __call__(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """Features (slices, 2048) per axis of one image (1, X, Y, Z) in [-1, 1]."""
        features = {}
        for axis, name in enumerate(AXES):
            slices = (volume_slices(image, axis).to(self.device) + 1.0) / 2.0
            batches = [
                self.network(slices[i : i + self.batch_size].repeat(1, 3, 1, 1) - self.mean)
                for i in range(0, len(slices), self.batch_size)
            ]
            features[name] = torch.cat(batches).cpu()
        return features


#: Either feature network: called on one image, it gives features per axis; `name` says which it is.
SliceFeatures = AutoencoderSliceFeatures | RadImageNetSliceFeatures


def make_feature_network(
    autoencoder_path: str, weights_path: str | None = None, device: torch.device | str = "cpu", pool_size: int = 8
) -> SliceFeatures:
    """RadImageNet ResNet-50 features when `weights_path` names a local file, else the autoencoder's latent slices."""
    if weights_path:
        return RadImageNetSliceFeatures(weights_path, device)
    return AutoencoderSliceFeatures(load_autoencoder(autoencoder_path, device), pool_size, device)
