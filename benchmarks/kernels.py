"""Kernel benchmark: fused top-k search and row gather against plain baselines.

Run from the repository root:

    python -m benchmarks.kernels --out benchmarks/results/kernels.json

With a usable GPU it times CupyKernels (fused search, gather) against torch
(matmul + topk) and CuPy (matmul + argpartition) on the same float16 slab,
using a device-to-device copy as the roofline. Without one it times
NumpyKernels against plain NumPy (matmul + argpartition) on float32 rows,
using a host copy as the roofline. Every method's answers are checked
against each other and against the stored rows before anything is timed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    # Run as a file, this folder would come first on sys.path and this very
    # module would shadow the top-level `kernels` package.
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import numpy as np

logger = logging.getLogger(__name__)

GATHER_ROWS = 4096
BUDGET_S = 1.0  # timing time per case, after warm-up
MIN_REPEATS = 3
MAX_REPEATS = 25


@dataclass
class Result:
    """One timed case; `vs_baseline` > 1 means faster than the baseline."""

    op: str
    n_rows: int
    n_queries: int
    method: str
    ms: float
    gbps: float
    pct_of_copy: float
    vs_baseline: float | None = None


def median_ms(
    run: Callable[[], Any], clock: Callable[[Callable[[], Any]], float]
) -> float:
    """Median of repeated timings after warm-up, repeats sized to BUDGET_S."""
    first = clock(run)  # warm-up: compilation, allocator growth
    if first < 0.5 * BUDGET_S * 1000:
        first = clock(run)
    repeats = int(
        min(MAX_REPEATS, max(MIN_REPEATS, BUDGET_S * 1000 / max(first, 1e-3)))
    )
    return statistics.median(clock(run) for _ in range(repeats))


# -- CPU: NumPy backend against plain NumPy -------------------------------------


class CpuBench:
    """NumpyKernels against plain NumPy, on float32 rows in host memory."""

    device = "cpu"
    baseline = "numpy"

    def __init__(self) -> None:
        from kernels.numpy_backend import NumpyKernels

        self.kernels = NumpyKernels()
        self.rng = np.random.default_rng(0)

    def describe(self) -> str:
        return f"{os.cpu_count()}-core {platform.machine()}, no GPU"

    def clock(self, run: Callable[[], Any]) -> float:
        start = time.perf_counter()
        run()
        return (time.perf_counter() - start) * 1000

    def copy_gbps(self) -> float:
        src = np.ones(256 << 20, np.uint8)
        dst = np.empty_like(src)
        ms = median_ms(lambda: np.copyto(dst, src), self.clock)
        return 2 * src.nbytes / ms / 1e6  # bytes read + bytes written

    def slab(self, n_rows: int, dim: int) -> tuple[Any, Any]:
        vectors = self.rng.standard_normal((n_rows, dim), dtype=np.float32)
        return vectors, np.ones(n_rows, bool)

    def queries(self, n_queries: int, dim: int) -> Any:
        return self.rng.standard_normal((n_queries, dim), dtype=np.float32)

    def search_methods(self, vectors: Any, eligible: Any, queries: Any, k: int) -> dict:
        return {
            "numpy_backend": lambda: self.kernels.search(vectors, eligible, queries, k),
            "numpy": lambda: numpy_topk(vectors, queries, k),
        }

    def gather_methods(self, vectors: Any, rows: np.ndarray) -> dict:
        return {
            "numpy_backend": lambda: self.kernels.gather(vectors, rows, False),
            "numpy": lambda: vectors[rows],
        }

    def to_host(self, array: Any) -> np.ndarray:
        return np.asarray(array)

    def release(self) -> None:
        """Nothing pooled on the host."""


def numpy_topk(vectors: np.ndarray, queries: np.ndarray, k: int) -> tuple:
    scores = queries @ vectors.T
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    top = np.take_along_axis(scores, part, 1)
    order = np.argsort(-top, axis=1, kind="stable")
    return np.take_along_axis(top, order, 1), np.take_along_axis(part, order, 1)


# -- GPU: fused kernels against torch and CuPy ----------------------------------


class GpuBench:
    """CupyKernels against torch and CuPy, on float16 rows in device memory."""

    device = "gpu"
    baseline = "torch"

    def __init__(self) -> None:
        import cupy

        from kernels.cupy_backend import CupyKernels

        self.cp = cupy
        self.kernels = CupyKernels()
        self.torch = _optional_torch()

    def describe(self) -> str:
        props = self.cp.cuda.runtime.getDeviceProperties(self.cp.cuda.Device().id)
        return str(props["name"].decode())

    def clock(self, run: Callable[[], Any]) -> float:
        start, end = self.cp.cuda.Event(), self.cp.cuda.Event()
        start.record()
        run()
        end.record()
        end.synchronize()
        return float(self.cp.cuda.get_elapsed_time(start, end))

    def copy_gbps(self) -> float:
        src = self.cp.ones(1 << 30, self.cp.uint8)
        dst = self.cp.empty_like(src)
        ms = median_ms(lambda: self.cp.copyto(dst, src), self.clock)
        return 2 * src.nbytes / ms / 1e6  # bytes read + bytes written

    def slab(self, n_rows: int, dim: int) -> tuple[Any, Any]:
        vectors = self.cp.empty((n_rows, dim), self.cp.float16)
        for start in range(0, n_rows, 1 << 20):
            chunk = vectors[start : start + (1 << 20)]
            chunk[...] = self.cp.random.standard_normal(chunk.shape, self.cp.float32)
        return vectors, self.cp.ones(n_rows, self.cp.uint8)

    def queries(self, n_queries: int, dim: int) -> Any:
        return self.cp.random.standard_normal((n_queries, dim), self.cp.float32)

    def search_methods(self, vectors: Any, eligible: Any, queries: Any, k: int) -> dict:
        half = queries.astype(vectors.dtype)
        methods = {
            "fused": lambda: self.kernels.search_device(vectors, eligible, queries, k),
            "cupy": lambda: cupy_topk(self.cp, vectors, half, k),
        }
        if self.torch is not None:
            tv = self.torch.from_dlpack(vectors)
            tq = self.torch.from_dlpack(queries).half()
            methods["torch"] = lambda: self.torch.topk(tq @ tv.T, k, dim=1)
        return methods

    def gather_methods(self, vectors: Any, rows: np.ndarray) -> dict:
        methods = {
            "fused": lambda: self.kernels.gather_device(vectors, rows, False),
            "cupy": lambda: vectors[self.cp.asarray(rows)].astype(self.cp.float32),
        }
        if self.torch is not None:
            tv = self.torch.from_dlpack(vectors)
            host = self.torch.from_numpy(rows.astype(np.int64))
            methods["torch"] = lambda: tv[host.to(tv.device)].float()
        return methods

    def to_host(self, array: Any) -> np.ndarray:
        if hasattr(array, "cpu"):  # a torch tensor
            return np.asarray(array.float().cpu().numpy())
        return np.asarray(self.cp.asnumpy(array))

    def release(self) -> None:
        self.cp.get_default_memory_pool().free_all_blocks()
        if self.torch is not None:
            self.torch.cuda.empty_cache()


def _optional_torch() -> Any:
    try:
        import torch
    except ImportError:
        logger.warning("no torch: the torch baseline is skipped")
        return None
    if not torch.cuda.is_available():
        logger.warning("torch has no CUDA: the torch baseline is skipped")
        return None
    return torch


def cupy_topk(cp: Any, vectors: Any, queries: Any, k: int) -> tuple:
    scores = queries @ vectors.T
    part = cp.argpartition(-scores, k - 1, axis=1)[:, :k]
    top = cp.take_along_axis(scores, part, 1)
    order = cp.argsort(-top, axis=1)
    return cp.take_along_axis(top, order, 1), cp.take_along_axis(part, order, 1)


# -- checks ---------------------------------------------------------------------


def check_search(
    bench: Any, vectors: Any, queries: Any, answers: dict, tol: float
) -> None:
    """Every method's rows must score what it claims, and all must agree."""
    host_queries = bench.to_host(queries).astype(np.float64)
    reference = None
    for method, (scores, rows) in answers.items():
        scores, rows = bench.to_host(scores), bench.to_host(rows).astype(np.int64)
        picked = bench.to_host(vectors[_index_for(bench, rows.ravel())]).astype(
            np.float64
        )
        true = np.einsum("qd,qkd->qk", host_queries, picked.reshape(*rows.shape, -1))
        _assert_close(method, "claimed vs true scores", scores, true, tol)
        if reference is None:
            reference = scores
        _assert_close(method, "scores vs the first method", scores, reference, tol)


def _index_for(bench: Any, rows: np.ndarray) -> Any:
    return bench.cp.asarray(rows) if bench.device == "gpu" else rows


def _assert_close(method: str, what: str, got: Any, want: Any, tol: float) -> None:
    err = float(np.max(np.abs(np.asarray(got, np.float64) - want), initial=0.0))
    if err > tol:
        raise AssertionError(
            f"{method}: {what} differ by {err:.4g} (allowed {tol:.4g})"
        )


def check_gather(bench: Any, vectors: Any, rows: np.ndarray, answers: dict) -> None:
    want = bench.to_host(vectors[_index_for(bench, rows)]).astype(np.float32)
    for method, out in answers.items():
        _assert_close(method, "gathered rows", bench.to_host(out), want, 0.0)


# -- the run --------------------------------------------------------------------


def time_methods(
    bench: Any,
    op: str,
    shape: tuple[int, int],
    methods: dict,
    bytes_read: int,
    copy: float,
) -> list[Result]:
    timed = {name: median_ms(run, bench.clock) for name, run in methods.items()}
    base = timed.get(bench.baseline)
    return [
        Result(
            op=op,
            n_rows=shape[0],
            n_queries=shape[1],
            method=name,
            ms=ms,
            gbps=bytes_read / ms / 1e6,
            pct_of_copy=100 * bytes_read / ms / 1e6 / copy,
            vs_baseline=None if base is None else base / ms,
        )
        for name, ms in timed.items()
    ]


def bench_size(bench: Any, n_rows: int, args: argparse.Namespace, copy: float) -> list:
    """Every query count, then gather, on one slab of `n_rows` rows."""
    vectors, eligible = bench.slab(n_rows, args.dim)
    results: list[Result] = []
    for n_q in args.queries:
        results += bench_search(bench, vectors, eligible, n_q, args, copy)
    results += bench_gather(bench, vectors, copy)
    del vectors, eligible
    bench.release()
    return results


def bench_search(
    bench: Any,
    vectors: Any,
    eligible: Any,
    n_q: int,
    args: argparse.Namespace,
    copy: float,
) -> list[Result]:
    queries = bench.queries(n_q, args.dim)
    # Top scores sit near 5 sigma = 5 * sqrt(dim); torch and CuPy return them
    # in float16 (11 bits) from float16 queries, the CPU methods in float32.
    tol = 5 * np.sqrt(args.dim) * (8e-3 if bench.device == "gpu" else 1e-5)
    methods = bench.search_methods(vectors, eligible, queries, args.k)
    check_search(bench, vectors, queries, collect_answers(bench, methods), tol)
    shape = (vectors.shape[0], n_q)
    results = time_methods(bench, "search", shape, methods, vectors.nbytes, copy)
    logger.info("search N=%d Q=%d done", vectors.shape[0], n_q)
    return results


def bench_gather(bench: Any, vectors: Any, copy: float) -> list[Result]:
    n_rows = vectors.shape[0]
    rows = np.random.default_rng(1).integers(0, n_rows, GATHER_ROWS)
    methods = bench.gather_methods(vectors, rows)
    check_gather(bench, vectors, rows, collect_answers(bench, methods))
    row_bytes = GATHER_ROWS * vectors.nbytes // n_rows
    return time_methods(bench, "gather", (n_rows, 0), methods, row_bytes, copy)


def collect_answers(bench: Any, methods: dict) -> dict:
    """Runs each method once. A baseline that fails (out of memory on the
    largest case, say) is left out with a warning; our own method may not fail.
    """
    ours = next(iter(methods))
    answers = {}
    for name, run in list(methods.items()):
        try:
            answers[name] = run()
        except Exception as exc:
            if name == ours:
                raise
            logger.warning("%s failed and is left out: %s", name, exc)
            del methods[name]
            bench.release()
    return answers


def goals(bench: Any, results: list[Result]) -> dict[str, str]:
    """The targets set for the fused kernels, judged on what was measured."""
    if bench.device != "gpu":
        return {"all": "not measured: no GPU in this run"}
    fused = {(r.n_rows, r.n_queries): r for r in results if r.method == "fused"}
    q1 = fused.get((1_000_000, 1))
    small = [r for r in fused.values() if r.n_queries <= 32 and r.vs_baseline]
    return {
        "N=1M Q=1 fused >= 70% of copy bandwidth": _verdict(
            q1 is not None, q1 is not None and q1.pct_of_copy >= 70
        ),
        "Q<=32 fused >= 1.5x torch": _verdict(
            bool(small), all((r.vs_baseline or 0) >= 1.5 for r in small)
        ),
    }


def _verdict(measured: bool, met: bool) -> str:
    if not measured:
        return "not measured"
    return "met" if met else "not met"


def print_table(results: list[Result], baseline: str) -> None:
    head = f"{'op':7}{'N':>11}{'Q':>5}  {'method':15}{'ms':>10}{'GB/s':>9}"
    print(head + f"{'% copy':>8}{'vs ' + baseline:>11}")
    for r in results:
        ratio = "" if r.vs_baseline is None else f"{r.vs_baseline:.2f}x"
        print(
            f"{r.op:7}{r.n_rows:>11}{r.n_queries:>5}  {r.method:15}{r.ms:>10.3f}"
            f"{r.gbps:>9.1f}{r.pct_of_copy:>7.1f}%{ratio:>11}"
        )


def pick_bench(device: str) -> Any:
    if device == "cpu":
        return CpuBench()
    try:
        from kernels.cupy_backend import gpu_available
    except ImportError as exc:
        if device == "gpu":
            raise SystemExit(f"--device gpu needs CuPy: {exc}") from exc
        return CpuBench()
    if gpu_available():
        return GpuBench()
    if device == "gpu":
        raise SystemExit("--device gpu: no usable CUDA device")
    return CpuBench()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=Path("benchmarks/results/kernels.json")
    )
    parser.add_argument("--device", choices=["auto", "cpu", "gpu"], default="auto")
    parser.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        help="slab rows (default: 100000 1000000 10000000 on a GPU, 100000 on a CPU)",
    )
    parser.add_argument("--queries", type=int, nargs="+", default=[1, 32, 256])
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("-k", type=int, default=10)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args = parse_args(argv)
    bench = pick_bench(args.device)
    default_sizes = (
        [100_000, 1_000_000, 10_000_000] if bench.device == "gpu" else [100_000]
    )
    copy = bench.copy_gbps()
    logger.info("%s on %s: copy %.1f GB/s", bench.device, bench.describe(), copy)
    results: list[Result] = []
    for n_rows in args.sizes or default_sizes:
        results += bench_size(bench, n_rows, args, copy)
    print_table(results, bench.baseline)
    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "device": bench.device,
        "machine": bench.describe(),
        "copy_gbps": copy,
        "dim": args.dim,
        "k": args.k,
        "goals": goals(bench, results),
        "results": [asdict(r) for r in results],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["goals"], indent=2))


if __name__ == "__main__":
    main()
