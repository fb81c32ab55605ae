"""Tiled VAE encoding and decoding with the same result as whole volumes, so that large grids (256^3) fit in little GPU memory.

Both ways, the blocks at the latent resolution (the decoder's first convolution, non-local attention
and first level; the encoder's last level, non-local attention, final norm and convolution, and the
posterior's convolutions) run on the whole latent: they are small there, and attention stays
global. The blocks above the latent resolution, where the memory goes, run tile by tile: the
decoder's from the first upsampling on, the encoder's up to its last downsampling. A tile is a block
of the latent grid (`decode_tile` or `encode_tile` latent voxels per side; as many times the
downsampling factor in image voxels) plus a halo as wide as those blocks' receptive field, counted
in whole latent voxels so that every tile starts on the phase of the encoder's strided convolutions;
only its core is kept, so convolutions see the same neighbors as in the whole volume. Group norms
would normalize each tile by its own statistics; instead they use the whole volume's, gathered in
one pass over the tiles per norm (each core's mean and variance, combined in float64), before the
final pass. So the tiled blocks never see more than (tile + 2 * halo) latent voxels per side, times
the downsampling factor at image resolution, whatever the volume; only the input and the
latent-resolution features are held whole. Image sizes need not divide by the factor: tiles start on
its multiples. Sliding windows with blending (MONAI's SlidingWindowInferer) leave tile-local
statistics in place and differ from whole decoding by tens of HU.

The bound: tiled and whole results differ only by float rounding (the order in which statistics and
convolutions sum). In float32 (TF32 or bfloat16 round coarser and scale it up), `TiledEncoder`'s
`z_mu` and `z_sigma` differ from `AutoencoderKL.encode`'s by at most 1e-4 times the whole result's
standard deviation (measured: under 1e-5), and `tiled_reconstruct` from `AutoencoderKL.reconstruct`
by at most 1e-3 times it, the latents' rounding carried through the decoder
(tests/networks/test_tiled_encoding.py); `TiledDecoder` matches `AutoencoderKL.decode` to 1e-4
(tests/bench/test_performance.py).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks import SpatialAttentionBlock, Upsample
from monai.networks.nets import AutoencoderKL
from monai.networks.nets.autoencoderkl import AEKLDownsample

#: A tile's (core, input) slices, in latent voxels.
Tile = tuple[list[slice], list[slice]]


class _Gathered(Exception):
    """Stops a tile's forward pass once the group norm being gathered has seen its input."""


def tile_size(tile: int | Sequence[int], parameter: str) -> list[int]:
    """`tile` as three positive latent sizes; the error names `parameter`, the option that set it."""
    size = [int(tile)] * 3 if isinstance(tile, (int, float)) else [int(t) for t in tile]
    if len(size) != 3 or min(size) < 1:
        raise ValueError(f"{parameter} must be a positive number of latent voxels (one number or three), got {tile!r}")
    return size


def normalize(x: torch.Tensor, norm: torch.nn.GroupNorm, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """`norm` applied to `x` with given per-(sample, group) statistics instead of `x`'s own (one fused pass, one new tensor)."""
    grouped = x.float().reshape(1, x.shape[0] * norm.num_groups, -1)
    normed = F.batch_norm(grouped, mean.flatten(), var.flatten(), training=False, eps=norm.eps).reshape(x.shape)
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return normed.mul_(norm.weight.reshape(shape)).add_(norm.bias.reshape(shape)).to(x.dtype)


def receptive_margin(blocks: Sequence[torch.nn.Module], resolutions: Sequence[int]) -> int:
    """Latent voxels of a tile's edge that differ from the whole volume after `blocks` (zero padding where the volume goes on).

    Traced in voxels of each block's resolution: a stride-1 convolution adds its radius; nearest upsampling doubles
    the margin; a strided convolution (MONAI's downsampling, padded by one voxel at the end) keeps the outputs whose
    whole span lies inside.
    """
    margin = 0
    for block, before, after in zip(blocks, resolutions, resolutions[1:]):
        margin *= max(1, after // before)
        for conv in (m for m in block.modules() if isinstance(m, torch.nn.Conv3d)):
            span, stride = (conv.kernel_size[0] - 1) * conv.dilation[0], conv.stride[0]
            margin = -(-(margin + span + 1 - stride) // stride) if stride > 1 else margin + span // 2
    return -(-margin // resolutions[-1])


def region(latent: Sequence[slice], origin: Sequence[int], scale: int) -> tuple:
    """Index of the `latent` region in a tensor whose corner is latent voxel `origin`, `scale` voxels per latent voxel."""
    return (..., *(slice((s.start - o) * scale, (s.stop - o) * scale) for s, o in zip(latent, origin)))


class TiledBlocks:
    """Blocks above the latent resolution run tile by tile on the latent grid, with whole-volume group-norm statistics."""

    def __init__(
        self, blocks: Sequence[torch.nn.Module], resolutions: Sequence[int], tile: int | Sequence[int], parameter: str
    ) -> None:
        """`resolutions`: voxels per latent voxel of the blocks' input, then of each block's output."""
        self.blocks, self.resolutions, self.tile = list(blocks), list(resolutions), tile_size(tile, parameter)
        if any(isinstance(m, SpatialAttentionBlock) for b in self.blocks for m in b.modules()):
            raise ValueError(
                f"{parameter}: this autoencoder has attention above the latent resolution, which tiles would cut; "
                f"leave {parameter} unset"
            )
        finest = [max(pair) for pair in zip(self.resolutions, self.resolutions[1:])]
        self.norms = [
            (m, s) for b, s in zip(self.blocks, finest) for m in b.modules() if isinstance(m, torch.nn.GroupNorm)
        ]
        self.halo = receptive_margin(self.blocks, self.resolutions)

    def tiles(self, grid: Sequence[int]) -> Iterator[Tile]:
        """(core, input) latent slices of every tile: cores partition the grid; inputs add the halo, clipped to it."""
        starts = [range(0, n, t) for n, t in zip(grid, self.tile)]
        for corner in itertools.product(*starts):
            core = [slice(s, min(s + t, n)) for s, t, n in zip(corner, self.tile, grid)]
            yield core, [slice(max(0, c.start - self.halo), min(n, c.stop + self.halo)) for c, n in zip(core, grid)]

    def _run_tile(
        self, features: torch.Tensor, core: list[slice], inputs: list[slice], stats: list, gather: int | None
    ) -> torch.Tensor:
        """The blocks on one tile with whole-volume norm statistics; with `gather`, add that norm's input sums instead."""
        origin = [i.start for i in inputs]

        def hook(index: int, scale: int):
            def apply(norm: torch.nn.GroupNorm, args: tuple[torch.Tensor], output: torch.Tensor) -> torch.Tensor:
                if index == gather:
                    values = args[0].unflatten(1, (norm.num_groups, -1))[region(core, origin, scale)].float()
                    if values.numel():
                        var, mean = torch.var_mean(values, dim=tuple(range(2, values.ndim)), correction=0)
                        count = values[0, 0].numel()
                        stats[index] += torch.stack(
                            [count * mean, count * (var + mean**2), torch.full_like(mean, count)]
                        ).double()
                    raise _Gathered
                return normalize(args[0], norm, *stats[index])

            return apply

        handles = [norm.register_forward_hook(hook(i, scale)) for i, (norm, scale) in enumerate(self.norms)]
        try:
            x = features[region(inputs, [0, 0, 0], self.resolutions[0])]
            for block in self.blocks:
                x = block(x)
            return x[region(core, origin, self.resolutions[-1])]
        finally:
            for handle in handles:
                handle.remove()

    def _statistics(self, features: torch.Tensor, tiles: list[Tile]) -> list:
        """Whole-volume (mean, var) of every norm's input, per sample and group, each gathered in one pass over the tiles."""
        stats: list = []
        for index, (norm, _) in enumerate(self.norms):
            stats.append(torch.zeros((3, len(features), norm.num_groups), dtype=torch.float64, device=features.device))
            for core, inputs in tiles:
                try:
                    self._run_tile(features, core, inputs, stats, index)
                except _Gathered:
                    pass
            total, squares, count = stats[index]
            mean = total / count
            stats[index] = (mean.float(), (squares / count - mean**2).clamp_min(0).float())
        return stats

    @torch.no_grad()
    def run_tiled(self, features: torch.Tensor) -> torch.Tensor:
        """The blocks' output for the whole of `features` (B, C, X, Y, Z), assembled from the tiles' cores."""
        before, after = self.resolutions[0], self.resolutions[-1]
        tiles = list(self.tiles([-(-n // before) for n in features.shape[2:]]))
        stats = self._statistics(features, tiles)
        out = None
        for core, inputs in tiles:
            piece = self._run_tile(features, core, inputs, stats, None)
            if out is None:
                out = piece.new_empty((*piece.shape[:2], *(n * after // before for n in features.shape[2:])))
            out[region(core, [0, 0, 0], after)] = piece
        return out


class TiledDecoder(TiledBlocks):
    """Decode latents of an AutoencoderKL in tiles of `tile` latent voxels (core size), equal to whole decoding up to rounding."""

    def __init__(self, autoencoder: AutoencoderKL, tile: int | Sequence[int]) -> None:
        self.autoencoder = autoencoder
        blocks = list(autoencoder.decoder.blocks)
        first_up = next((i for i, b in enumerate(blocks) if isinstance(b, Upsample)), len(blocks))
        self.low, high = blocks[:first_up], blocks[first_up:]
        resolutions = itertools.accumulate(high, lambda r, b: r * 2 if isinstance(b, Upsample) else r, initial=1)
        super().__init__(high, list(resolutions), tile, "decode_tile")

    @torch.no_grad()
    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        """Images decoded from latents `z` (B, C, X, Y, Z), as `autoencoder.decode(z)` would give them."""
        features = self.autoencoder.post_quant_conv(z)
        for block in self.low:
            features = block(features)
        return self.run_tiled(features)


class TiledEncoder(TiledBlocks):
    """Encode images with an AutoencoderKL in tiles of `tile` latent voxels (core size), equal to whole encoding up to rounding."""

    def __init__(self, autoencoder: AutoencoderKL, tile: int | Sequence[int]) -> None:
        self.autoencoder = autoencoder
        blocks = list(autoencoder.encoder.blocks)
        last_down = max((i for i, b in enumerate(blocks) if isinstance(b, AEKLDownsample)), default=-1)
        high, self.low = blocks[: last_down + 1], blocks[last_down + 1 :]
        factor = 2 ** sum(isinstance(b, AEKLDownsample) for b in high)
        resolutions = itertools.accumulate(
            high, lambda r, b: r // 2 if isinstance(b, AEKLDownsample) else r, initial=factor
        )
        super().__init__(high, list(resolutions), tile, "encode_tile")

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and sigma of `images` (B, C, X, Y, Z), as `autoencoder.encode(images)` would give them."""
        h = self.run_tiled(images)
        for block in self.low:
            h = block(h)
        z_log_var = torch.clamp(self.autoencoder.quant_conv_log_sigma(h), -30.0, 20.0)
        return self.autoencoder.quant_conv_mu(h), torch.exp(z_log_var / 2)


def tiled_reconstruct(autoencoder: AutoencoderKL, images: torch.Tensor, tile: int | Sequence[int]) -> torch.Tensor:
    """`autoencoder.reconstruct(images)` (decoding of the posterior mean) in tiles of `tile` latent voxels both ways."""
    return TiledDecoder(autoencoder, tile)(TiledEncoder(autoencoder, tile)(images)[0])
