"""Multi-process (torchrun, DDP) helpers the training configs call; each is a no-op in a single process."""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
from collections.abc import Sequence

import ignite.distributed as idist
import torch
import torch.distributed as dist
from monai.data import DistributedSampler
from torch.nn.parallel import DistributedDataParallel

logger = logging.getLogger(__name__)

#: Numbers the key-value exchanges, so each uses fresh keys; every rank makes them in the same order.
_exchange_count = itertools.count()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def is_main_process() -> bool:
    """True in rank 0 or outside torchrun: the process that logs and writes checkpoints."""
    return rank() == 0


def local_device() -> torch.device:
    """This rank's device under torchrun: the GPU numbered LOCAL_RANK, or the CPU on a machine without one."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def init(device: torch.device) -> None:
    """Join the process group torchrun set up (nccl on GPUs, gloo on CPUs) and pin this rank's GPU."""
    backend = "nccl" if device.type == "cuda" else "gloo"
    if "LOCAL_RANK" not in os.environ:
        raise RuntimeError(
            "multi_gpu_train.json runs under torchrun (it sets LOCAL_RANK): torchrun --nproc_per_node=N -m monai.bundle run ..."
        )
    if not is_distributed():
        dist.init_process_group(backend=backend)
    idist.sync()  # ignite sets up its own view of the group with a collective: do it on every rank now
    if device.type == "cuda":
        torch.cuda.set_device(device)
    logger.info("rank %d of %d on %s (%s)", rank(), dist.get_world_size(), device, backend)


def finish() -> None:
    if is_distributed():
        dist.destroy_process_group()


def data_parallel(module: torch.nn.Module) -> torch.nn.Module:
    """`module` wrapped in DistributedDataParallel under torchrun, unchanged otherwise."""
    if not is_distributed():
        return module
    device = next(module.parameters()).device
    return DistributedDataParallel(module, device_ids=[device] if device.type == "cuda" else None)


def mean_across_ranks(value: float) -> float:
    """The mean of `value` over all ranks (e.g. the latent scale factor, estimated on each rank)."""
    if not is_distributed():
        return value
    values = [float.fromhex(v.decode()) for v in _exchange(float(value).hex().encode())]
    return sum(values) / len(values)


def check_replicas(modules: Sequence[torch.nn.Module]) -> None:
    """Raise if this rank's weights of any of `modules` are not bit for bit rank 0's (the DDP replicas drifted apart)."""
    for module in modules:
        _check_replica(module)


def _check_replica(module: torch.nn.Module) -> None:
    if not is_distributed():
        return
    weights = torch.cat([p.detach().flatten().double().cpu() for p in module.parameters()])
    digests = _exchange(hashlib.sha256(weights.numpy().tobytes()).hexdigest().encode())
    differ = [r for r, digest in enumerate(digests) if digest != digests[0]]
    if differ:
        raise RuntimeError(f"DDP replicas differ: ranks {differ} do not hold rank 0's weights ({len(digests)} ranks)")
    logger.info("weights identical on all %d ranks", len(digests))


def _exchange(value: bytes) -> list[bytes]:
    """Every rank's `value`, in rank order, passed through the process group's key-value store.

    Not a gloo collective on purpose: gloo's worker threads release a collective's tensors shortly
    after it completes, and when that falls in the interpreter's exit (these calls end a training run)
    the process aborts ("terminate called without an active exception", pytorch/pytorch#179291).
    """
    store = dist.distributed_c10d._get_default_store()
    prefix = f"lung_ct_ldm/exchange{next(_exchange_count)}"
    store.set(f"{prefix}/{rank()}", value)
    keys = [f"{prefix}/{r}" for r in range(dist.get_world_size())]
    store.wait(keys)
    return [store.get(key) for key in keys]


def data_sampler(dataset) -> DistributedSampler | None:
    """A shuffling DistributedSampler that gives each rank its share of `dataset` under torchrun, None otherwise."""
    return DistributedSampler(dataset, shuffle=True, even_divisible=True) if is_distributed() else None
