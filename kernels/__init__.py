"""Array kernels for the resident tiers: CuPy on a GPU, NumPy otherwise.

Only this package touches the GPU. Callers ask for a backend and use the
contract in kernels.api; which implementation they get is decided once.
"""

from __future__ import annotations

import logging
from functools import cache

from kernels.api import Index, Kernels
from kernels.numpy_backend import NumpyKernels

__all__ = ["Index", "Kernels", "device_free_bytes", "device_kernels", "host_kernels"]

logger = logging.getLogger(__name__)


@cache
def host_kernels() -> Kernels:
    """Kernels over host memory: T1, and T0 without a GPU.

    Where the GPU reads host memory coherently (a GH200), the rows live in
    pinned host memory and the GPU kernels search them in place; elsewhere
    NumPy does the work.
    """
    if device_kernels().on_gpu:
        from kernels.cupy_backend import PinnedHostKernels, host_memory_is_coherent

        if host_memory_is_coherent():
            logger.info("T1 in pinned host memory, searched by the GPU in place")
            return PinnedHostKernels()
    return NumpyKernels()


def device_free_bytes() -> int | None:
    """Free memory of the CUDA device in bytes; None without a usable one."""
    if not device_kernels().on_gpu:
        return None
    from kernels.cupy_backend import memory_info

    return memory_info()[0]


@cache
def device_kernels() -> Kernels:
    """Kernels over GPU memory when a CUDA device is usable, else host kernels."""
    try:
        from kernels.cupy_backend import CupyKernels, gpu_available
    except ImportError as exc:
        logger.warning("no CuPy (%s): T0 runs on NumPy in host memory", exc)
        return NumpyKernels()
    if not gpu_available():
        logger.warning("no CUDA device: T0 runs on NumPy in host memory")
        return NumpyKernels()
    return CupyKernels()
