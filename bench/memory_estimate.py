"""Estimated GPU memory and FLOPs of a training step or a decode, without a GPU: peak bytes of live tensors, on fake tensors.

The work runs under `FakeTensorMode` (shapes and dtypes only, no arithmetic, no memory), while one
dispatch mode adds up the storages alive at each moment and another the operations' FLOPs (torch's
flop formulas). That is what `torch.cuda.max_memory_allocated` counts, less the CUDA context, cuDNN
workspaces and allocator fragmentation, so a real card needs some headroom above the estimate.
Mixed precision is modeled with CPU autocast to float16 plus CUDA's float32 policy for the norms
and softmax (CPU autocast leaves them in half precision; CUDA runs them in float32, which doubles
the activations they save), so the estimate follows CUDA AMP: the thesis autoencoder's VAE-GAN
iteration is estimated at 50.0 GiB and measured at 50.6 GiB on an H200 (bundle/docs/benchmark_gpu.md).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from measure import GIB
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves, tree_map
from torch.utils.flop_counter import flop_registry, sdpa_backward_flop_count, sdpa_flop_count, shape_wrapper
from torch.utils.weak import WeakIdKeyDictionary

#: Operators CUDA autocast runs in float32 (casting half inputs up) and CPU autocast leaves in half precision.
CUDA_FLOAT32_OPERATORS = ("group_norm", "layer_norm", "softmax.int", "log_softmax.int")


def _cpu_attention_flops(query: Any, key: Any, value: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    """FLOPs of CPU scaled dot-product attention (torch counts only the GPU kernels'): as for flash attention."""
    return sdpa_flop_count(query, key, value)


def _cpu_attention_backward_flops(
    grad_out: Any, query: Any, key: Any, value: Any, *args: Any, out_shape: Any = None, **kwargs: Any
) -> int:
    """FLOPs of CPU scaled dot-product attention's backward pass: as for flash attention's."""
    return sdpa_backward_flop_count(grad_out, query, key, value)


#: Flop formulas per operator: torch's flop counter's, and those it leaves out on CPU tensors.
FLOP_FORMULAS = {
    **flop_registry,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: shape_wrapper(_cpu_attention_flops),
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: shape_wrapper(_cpu_attention_backward_flops),
}


class FlopTally(TorchDispatchMode):
    """Dispatch mode adding up the FLOPs of every operator with a formula in FLOP_FORMULAS.

    torch's `FlopCounterMode` would do, but its module hooks keep activations alive, and so undo activation
    checkpointing in the memory counted beside it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = FLOP_FORMULAS.get(func.overloadpacket)
        if formula is not None:
            self.total += formula(*args, **kwargs, out_val=out)
        return out


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


def _to_float32(value: Any) -> Any:
    """A half-precision tensor as float32; anything else unchanged."""
    if isinstance(value, torch.Tensor) and value.dtype in (torch.float16, torch.bfloat16):
        return value.float()
    return value


def _float32_kernel(operator: torch._ops.OpOverload) -> Callable[..., Any]:
    """An autocast kernel running `operator` on float32 inputs, as CUDA autocast's float32 policy does."""

    def kernel(*args: Any, **kwargs: Any) -> Any:
        with torch.autocast("cpu", enabled=False):
            return operator(*tree_map(_to_float32, args), **tree_map(_to_float32, kwargs))

    return kernel


@contextmanager
def cuda_float32_policy() -> Iterator[None]:
    """CPU autocast runs CUDA_FLOAT32_OPERATORS in float32 meanwhile, so that activations have the dtypes CUDA AMP gives them.

    It is a kernel for the autocast dispatch key rather than a function mode, so that activation checkpointing's
    recomputation in the backward pass, which re-enters autocast but no function mode, gets it too.
    """
    with torch.library._scoped_library("aten", "IMPL") as library:
        for name in CUDA_FLOAT32_OPERATORS:
            base, _, overload = name.partition(".")
            library.impl(
                name, _float32_kernel(getattr(getattr(torch.ops.aten, base), overload or "default")), "AutocastCPU"
            )
        yield


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


def trained_state(modules: Iterable[torch.nn.Module]) -> list[torch.Tensor]:
    """Weights plus a gradient and Adam's two moments per weight: what a trainer holds between its steps (during validation)."""
    weights = [p for m in modules for p in m.parameters()]
    return weights + [torch.zeros_like(p) for p in weights for _ in range(3)]


def mixed_precision(dtype: torch.dtype | None, device_type: str) -> AbstractContextManager:
    """Autocast to `dtype` on `device_type` (None: none); `estimate` gives CPU autocast CUDA's float32 policy."""
    return nullcontext() if dtype is None else torch.autocast(device_type, dtype=dtype)


@dataclass
class Work:
    """A step to size or time: `setup(device)` builds its state, `step(state)` runs it, `held(state)` lists what lives before it.

    With `warmup`, one step runs first so that gradients and optimizer states exist, as in steady training.
    """

    setup: Callable[[torch.device], Any]
    step: Callable[[Any], Any]
    held: Callable[[Any], list[torch.Tensor]]
    warmup: bool = True


class Estimate(NamedTuple):
    """Peak GiB of live tensors and floating-point operations of one step on fake tensors."""

    peak_gib: float
    flops: int


def estimate(work: Work) -> Estimate:
    """Peak GiB of live tensors and FLOPs (a multiply-add counts two) during one `work` step on fake CPU tensors.

    CPU autocast follows CUDA's float32 policy meanwhile (`cuda_float32_policy`).
    """
    with FakeTensorMode(allow_non_fake_inputs=True), cuda_float32_policy():
        state = work.setup(torch.device("cpu"))
        if work.warmup:
            work.step(state)
        with LiveTensorBytes(work.held(state)) as tracker, FlopTally() as counter:
            work.step(state)
    return Estimate(tracker.peak / GIB, int(counter.total))
