"""What decides a run's floating-point numerics, and a deterministic mode.

The same spec and seed give bit-identical results only under the same numerical order: thread count
(how reductions in GEMM/convolution are split), CPU kernels (torch's vector ISA, the BLAS/oneDNN
build), GPU model, CUDA/cuDNN versions and algorithm choice. `numerics_info` records those facts in
every result.json (`record["numerics"]`, flat scalars so reports can group on them); none of them is
part of the run identity (the spec key), so runs of one spec made under different numerics land on
the same key in different results roots (see docs/reproducibility.md).

`enable_deterministic` makes a process's result a function of (spec, seed, numerics_info): same
machine kind + thread count + library build -> identical metrics. It does not make different
machines agree; nothing cheap does.
"""
from __future__ import annotations

import os
import platform
import re
from functools import lru_cache
from typing import Any

import torch

# Read by cuBLAS when its handle is created: a fixed workspace makes cuBLAS GEMMs reproducible
# (https://docs.nvidia.com/cuda/cublas/#results-reproducibility); torch raises without it when
# deterministic algorithms are on and a CUDA GEMM runs.
CUBLAS_WORKSPACE = ":4096:8"
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


@lru_cache(maxsize=1)
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@lru_cache(maxsize=1)
def _torch_build() -> dict[str, Any]:
    """BLAS/LAPACK behind torch's CPU ops (from torch's build config string: cheap, cached)."""
    show = torch.__config__.show()
    blas = re.search(r"BLAS_INFO=([^,\s]+)", show)
    return {"torch_blas": blas.group(1) if blas else None,
            "mkldnn": bool(torch.backends.mkldnn.is_available())}


@lru_cache(maxsize=1)
def _numpy_blas() -> str | None:
    try:
        import numpy as np

        cfg = np.show_config(mode="dicts")  # numpy >= 1.25
        blas = cfg.get("Build Dependencies", {}).get("blas", {})
        return f"{blas.get('name')} {blas.get('version', '')}".strip() or None
    except Exception:  # noqa: BLE001 - older numpy / odd builds: this field is a nicety
        return None


def _cudnn_version() -> int | None:
    try:
        return torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    except Exception:  # noqa: BLE001 - a CUDA build without a usable cuDNN
        return None


def is_deterministic() -> bool:
    """Deterministic mode as `enable_deterministic` sets it (all three switches)."""
    return bool(torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
                and not torch.backends.cudnn.benchmark)


def numerics_info(device: torch.device | str | None = None) -> dict[str, Any]:
    """Flat record of what decides the floating-point order of a run on `device`."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    cuda = device.type == "cuda"
    info: dict[str, Any] = {
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if cuda else cpu_model(),
        "cpu_model": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),  # vector ISA of torch's CPU kernels
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": _cudnn_version(),
        **_torch_build(),
        "numpy_blas": _numpy_blas(),
        "deterministic": is_deterministic(),
        "deterministic_algorithms": bool(torch.are_deterministic_algorithms_enabled()),
        "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
    }
    for name in THREAD_ENV:
        info[name.lower()] = os.environ.get(name)
    return info


def enable_deterministic(threads: int | None = None) -> int:
    """Deterministic algorithms everywhere, cuDNN without autotuning, a fixed cuBLAS workspace and a
    fixed intra-op thread count (`threads`, default: the current count). Process-wide; call before
    the first CUDA op. Ops without a deterministic implementation then raise instead of silently
    varying. Returns the thread count in force."""
    if threads is not None:
        if threads < 1:
            from bench.errors import UsageError

            raise UsageError(f"deterministic mode needs a thread count >= 1 (got {threads})")
        torch.set_num_threads(int(threads))
    if torch.cuda.is_available():
        # must precede cuBLAS initialisation; an explicit user setting is kept
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    return torch.get_num_threads()
