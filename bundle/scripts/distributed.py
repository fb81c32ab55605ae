"""Multi-process (torchrun, DDP) helpers the training configs call; each is a no-op in a single process."""

from __future__ import annotations

import logging
import os

import torch
import ignite.distributed as idist
import torch.distributed as dist
from monai.data import DistributedSampler
from torch.nn.parallel import DistributedDataParallel

logger = logging.getLogger(__name__)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def is_main_process() -> bool:
    """True in rank 0 or outside torchrun: the process that logs and writes checkpoints."""
    return rank() == 0


def init(backend: str, device: torch.device) -> None:
    """Join the process group torchrun set up (nccl on GPUs, gloo on CPUs) and pin this rank's GPU."""
    if "LOCAL_RANK" not in os.environ:
        raise RuntimeError("multi_gpu_train.json runs under torchrun (it sets LOCAL_RANK): torchrun --nproc_per_node=N -m monai.bundle run ...")
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
    tensor = torch.tensor([float(value)], dtype=torch.float64, device=_reduction_device())
    dist.all_reduce(tensor)
    return float(tensor.item()) / dist.get_world_size()


def check_replicas(module: torch.nn.Module) -> float:
    """Largest difference between this rank's weights and rank 0's; raises if the replicas drifted apart."""
    if not is_distributed():
        return 0.0
    flat = torch.cat([p.detach().flatten().double() for p in module.parameters()]).to(_reduction_device())
    reference = flat.clone()
    dist.broadcast(reference, src=0)
    difference = (flat - reference).abs().max()
    dist.all_reduce(difference, op=dist.ReduceOp.MAX)
    if difference.item() > 0:
        raise RuntimeError(f"DDP replicas differ by up to {difference.item():.3g} across {dist.get_world_size()} ranks")
    logger.info("weights identical on all %d ranks", dist.get_world_size())
    return float(difference.item())


def sampler(dataset) -> DistributedSampler | None:
    """A shuffling DistributedSampler that gives each rank its share of `dataset` under torchrun, None otherwise."""
    return DistributedSampler(dataset, shuffle=True, even_divisible=True) if is_distributed() else None


def _reduction_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
