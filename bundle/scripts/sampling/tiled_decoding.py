"""Tiled VAE decoding with the same result as whole decoding, so that large grids (256^3) decode in little GPU memory.

The decoder's blocks at the latent resolution (first convolution, non-local attention, first
level) run on the whole latent: they are small there, and attention stays global. The blocks from
the first upsampling on, where the memory goes, run tile by tile: each tile is a block of the latent
(`tile` voxels per side) plus a halo as wide as those blocks' receptive field, and only its core is
kept, so convolutions see the same neighbours as in the whole volume. Group norms would normalise
each tile by its own statistics; instead they use the whole volume's, gathered in one pass over the
tiles per norm (each core's mean and variance, combined in float64), before the final pass. Sliding windows with
blending (MONAI's SlidingWindowInferer over the decoder) leave tile-local statistics in place and
differ from whole decoding by tens of HU; this differs only by float rounding.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks import SpatialAttentionBlock, Upsample
from monai.networks.nets import AutoencoderKL


class _Gathered(Exception):
    """Stops a tile's forward pass once the group norm being gathered has seen its input."""


def _tile_size(tile: int | Sequence[int]) -> list[int]:
    """`tile` as three positive latent sizes; the error names decode_tile."""
    size = [int(tile)] * 3 if isinstance(tile, (int, float)) else [int(t) for t in tile]
    if len(size) != 3 or min(size) < 1:
        raise ValueError(f"decode_tile must be a positive number of latent voxels (one number or three), got {tile!r}")
    return size


def _normalise(x: torch.Tensor, norm: torch.nn.GroupNorm, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """`norm` applied to `x` with given per-(sample, group) statistics instead of `x`'s own (one fused pass, one new tensor)."""
    grouped = x.float().reshape(1, x.shape[0] * norm.num_groups, -1)
    normed = F.batch_norm(grouped, mean.flatten(), var.flatten(), training=False, eps=norm.eps).reshape(x.shape)
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return normed.mul_(norm.weight.reshape(shape)).add_(norm.bias.reshape(shape)).to(x.dtype)


class TiledDecoder:
    """Decode latents of an AutoencoderKL in tiles of `tile` latent voxels (core size), equal to whole decoding up to rounding."""

    def __init__(self, autoencoder: AutoencoderKL, tile: int | Sequence[int]) -> None:
        self.autoencoder, self.tile = autoencoder, _tile_size(tile)
        blocks = list(autoencoder.decoder.blocks)
        first_up = next((i for i, b in enumerate(blocks) if isinstance(b, Upsample)), len(blocks))
        self.low, self.high = blocks[:first_up], blocks[first_up:]
        if any(isinstance(m, SpatialAttentionBlock) for b in self.high for m in b.modules()):
            raise ValueError(
                "decode_tile: this decoder has attention above the latent resolution, which tiles would cut; decode whole"
            )
        self.norms = [m for b in self.high for m in b.modules() if isinstance(m, torch.nn.GroupNorm)]
        self.halo = self._receptive_radius()

    def _receptive_radius(self) -> int:
        """Latent voxels a tile's core depends on beyond itself: the convolutions' radii, each at its block's resolution."""
        radius, scale = 0.0, 1
        for block in self.high:
            scale *= 2 if isinstance(block, Upsample) else 1
            convs = [m for m in block.modules() if isinstance(m, torch.nn.Conv3d)]
            radius += sum((c.kernel_size[0] // 2) * c.dilation[0] / scale for c in convs)
        return math.ceil(radius)

    def _tiles(self, shape: Sequence[int]) -> Iterator[tuple[list[slice], list[slice]]]:
        """(core, input) latent slices of every tile: cores partition the latent; inputs add the halo, clipped to it."""
        starts = [range(0, n, t) for n, t in zip(shape, self.tile)]
        for corner in itertools.product(*starts):
            core = [slice(s, min(s + t, n)) for s, t, n in zip(corner, self.tile, shape)]
            yield core, [slice(max(0, c.start - self.halo), min(n, c.stop + self.halo)) for c, n in zip(core, shape)]

    def _run_tile(
        self, features: torch.Tensor, core: list[slice], inputs: list[slice], stats: list, gather: int | None
    ) -> torch.Tensor:
        """The high-resolution blocks on one tile with whole-volume norm statistics; with `gather`, add that norm's input sums instead."""

        def core_of(x: torch.Tensor) -> torch.Tensor:
            scale = x.shape[-3] // (inputs[0].stop - inputs[0].start)
            return x[
                (..., *(slice((c.start - i.start) * scale, (c.stop - i.start) * scale) for c, i in zip(core, inputs)))
            ]

        def hook(index: int):
            def apply(norm: torch.nn.GroupNorm, args: tuple[torch.Tensor], output: torch.Tensor) -> torch.Tensor:
                if index == gather:
                    values = core_of(args[0].unflatten(1, (norm.num_groups, -1))).float()
                    var, mean = torch.var_mean(values, dim=tuple(range(2, values.ndim)), correction=0)
                    count = values[0, 0].numel()
                    stats[index] += torch.stack(
                        [count * mean, count * (var + mean**2), torch.full_like(mean, count)]
                    ).double()
                    raise _Gathered
                return _normalise(args[0], norm, *stats[index])

            return apply

        handles = [norm.register_forward_hook(hook(i)) for i, norm in enumerate(self.norms)]
        try:
            x = features[(..., *inputs)]
            for block in self.high:
                x = block(x)
            return core_of(x)
        finally:
            for handle in handles:
                handle.remove()

    @torch.no_grad()
    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        """Images decoded from latents `z` (B, C, X, Y, Z), as `autoencoder.decode(z)` would give them."""
        features = self.autoencoder.post_quant_conv(z)
        for block in self.low:
            features = block(features)
        tiles = list(self._tiles(features.shape[2:]))
        stats: list = []
        for index, norm in enumerate(self.norms):
            stats.append(torch.zeros((3, len(z), norm.num_groups), dtype=torch.float64, device=z.device))
            for core, inputs in tiles:
                try:
                    self._run_tile(features, core, inputs, stats, index)
                except _Gathered:
                    pass
            total, squares, count = stats[index]
            mean = total / count
            stats[index] = (mean.float(), (squares / count - mean**2).clamp_min(0).float())
        scale = 2 ** sum(isinstance(b, Upsample) for b in self.high)
        out = None
        for core, inputs in tiles:
            decoded = self._run_tile(features, core, inputs, stats, None)
            if out is None:
                out = decoded.new_empty((*decoded.shape[:2], *(n * scale for n in features.shape[2:])))
            out[(..., *(slice(c.start * scale, c.stop * scale) for c in core))] = decoded
        return out
