"""Estimated GPU memory of a training step or a decode, without a GPU: peak bytes of live tensors, on fake tensors.

The work runs under `FakeTensorMode` (shapes and dtypes only, no arithmetic, no memory), while a
dispatch mode adds up the storages alive at each moment. That is what `torch.cuda.max_memory_allocated`
counts, less the CUDA context, cuDNN workspaces and allocator fragmentation, so a real card needs
some headroom above the estimate. Mixed precision is modelled with CPU autocast to float16, whose
op lists match CUDA's for the convolutions, matmuls and attention that dominate these networks.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from measure import GIB
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.weak import WeakIdKeyDictionary


class LiveTensorBytes(TorchDispatchMode):
    """Dispatch mode tracking the bytes of live tensor storages (those given at start plus every op's outputs) and their peak."""

    def __init__(self, existing: Iterable[torch.Tensor] = ()) -> None:
        super().__init__()
        self.sizes: WeakIdKeyDictionary = WeakIdKeyDictionary()
        self.current = self.peak = 0
        for tensor in existing:
            self.track(tensor)

    def track(self, tensor: torch.Tensor) -> None:
        """Count `tensor`'s storage once, until it is freed."""
        storage = tensor.untyped_storage()
        if storage in self.sizes:
            return
        size = storage.nbytes()
        self.sizes[storage] = size
        self.current += size
        self.peak = max(self.peak, self.current)
        weakref.finalize(storage, self._release, size)

    def _release(self, size: int) -> None:
        self.current -= size

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor):
                self.track(leaf)
        return out


def state_tensors(
    modules: Iterable[torch.nn.Module], optimizers: Iterable[torch.optim.Optimizer] = ()
) -> list[torch.Tensor]:
    """Weights, buffers, gradients and optimizer states: the memory a training step starts with."""
    tensors = []
    for module in modules:
        tensors += [*module.parameters(), *module.buffers()]
        tensors += [p.grad for p in module.parameters() if p.grad is not None]
    for optimizer in optimizers:
        tensors += [v for state in optimizer.state.values() for v in state.values() if isinstance(v, torch.Tensor)]
    return tensors


def mixed_precision(amp: bool) -> AbstractContextManager:
    """Float16 autocast (as the trainers' AMP on CUDA), or nothing."""
    return torch.autocast("cpu", dtype=torch.float16) if amp else nullcontext()


def estimate_peak_gib(
    setup: Callable[[], Any], step: Callable[[Any], Any], held: Callable[[Any], list[torch.Tensor]], warmup: bool = True
) -> float:
    """Peak GiB of live tensors during `step(setup())` on fake tensors.

    `held(state)` lists the tensors alive before the step (weights, optimizer states...). With
    `warmup`, one step runs first so that gradients and optimizer states exist, as in steady training.
    """
    with FakeTensorMode(allow_non_fake_inputs=True):
        state = setup()
        if warmup:
            step(state)
        with LiveTensorBytes(held(state)) as tracker:
            step(state)
    return tracker.peak / GIB
