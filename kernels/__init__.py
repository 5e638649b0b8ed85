"""Array kernels for the resident tiers: CuPy on a GPU, NumPy otherwise.

Only this package touches the GPU. Callers ask for a backend and use the
contract in kernels.api; which implementation they get is decided once.
"""

from __future__ import annotations

import logging
from functools import cache

from kernels.api import Index, Kernels
from kernels.numpy_backend import NumpyKernels

__all__ = ["Index", "Kernels", "device_kernels", "host_kernels"]

logger = logging.getLogger(__name__)


@cache
def host_kernels() -> Kernels:
    """Kernels over host memory (the T1 tier, and T0 without a GPU)."""
    return NumpyKernels()


@cache
def device_kernels() -> Kernels:
    """Kernels over GPU memory when a CUDA device is usable, else host kernels."""
    try:
        from kernels.cupy_backend import CupyKernels, gpu_available
    except ImportError as exc:
        logger.warning("no CuPy (%s): T0 runs on NumPy in host memory", exc)
        return host_kernels()
    if not gpu_available():
        logger.warning("no CUDA device: T0 runs on NumPy in host memory")
        return host_kernels()
    return CupyKernels()
