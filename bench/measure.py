"""Measuring work on a device: wall seconds (CUDA synchronised), measured peak memory, and what the machine was and did.

Peak memory is `torch.cuda.max_memory_allocated` on a GPU. On the CPU it is the process's peak
resident set (VmHWM, reset through /proc/self/clear_refs before the work), which also counts the
libraries and everything else the process holds: the table gives the resident set before the work too.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch

T = TypeVar("T")
GIB = 2**30


def synchronize(device: torch.device) -> None:
    """Wait for queued CUDA work, so wall time covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(work: Callable[[], T], device: torch.device) -> tuple[T, float]:
    """`work()`'s result and its wall seconds on `device`."""
    synchronize(device)
    start = time.perf_counter()
    result = work()
    synchronize(device)
    return result, time.perf_counter() - start


def _status_kib(field: str) -> int:
    """A `kB` field of /proc/self/status (VmRSS, VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


class PeakMemory:
    """Context manager: peak memory (GiB) of the work inside it, and what was held before (`before_gib`)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.kind = "CUDA max allocated" if device.type == "cuda" else "process peak RSS"
        self.before_gib = self.peak_gib = float("nan")

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.before_gib = torch.cuda.memory_allocated(self.device) / GIB
        else:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident set
            self.before_gib = _status_kib("VmRSS") * 1024 / GIB
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            self.peak_gib = torch.cuda.max_memory_allocated(self.device) / GIB
        else:
            # VmHWM lags the per-thread RSS counters the VmRSS reading includes: never below what was held at the start
            self.peak_gib = max(self.before_gib, _status_kib("VmHWM") * 1024 / GIB)


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model name."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def device_memory_gib(device: torch.device) -> float:
    """Total memory of the GPU, or the machine's available memory for the CPU."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory / GIB
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024 / GIB
    raise RuntimeError("/proc/meminfo has no MemAvailable")


def other_training_processes() -> list[str]:
    """Command lines of other processes running a bundle workflow (`monai.bundle run`), which would skew CPU timings."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        if "monai.bundle run" in cmdline:
            found.append(cmdline)
    return found


def machine(device: torch.device) -> dict[str, Any]:
    """What the figures were measured on and under: device, threads, memory, versions, load."""
    return {
        "device": device_name(device),
        "device_type": device.type,
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gib": round(device_memory_gib(device), 1),
        "torch": torch.__version__,
        "load_average_1min": round(os.getloadavg()[0], 2),
        "other_bundle_workflows_running": len(other_training_processes()),
    }
