"""End-to-end latency of the HTTP API against the 50 ms target.

Starts the service (`tiermem serve`, embedded stores, a fresh data directory,
a free port) unless --url points at a running one, checks that each operation
returns the right answer, warms up, then times sequential requests from a
client on the same machine. Prints a table and writes JSON.

    python -m benchmarks.latency --requests 200 --out benchmarks/results/latency.json
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np

TARGET_MS = 50.0
DIM = 384


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def started_service() -> Iterator[str]:
    """A `tiermem serve` child process on a free port, stopped on exit."""
    with tempfile.TemporaryDirectory(prefix="tiermem-bench-") as data_dir:
        os.chmod(data_dir, 0o755)  # the embedded PostgreSQL runs as its own user
        port = free_port()
        env = {**os.environ, "TIERMEM_DATA_DIR": data_dir, "TIERMEM_PORT": str(port)}
        env["TIERMEM_LOG_LEVEL"] = "warning"
        child = subprocess.Popen([sys.executable, "-m", "app.cli", "serve"], env=env)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_ready(url, child)
            yield url
        finally:
            child.terminate()
            child.wait(timeout=60)


def wait_ready(
    url: str, child: subprocess.Popen[bytes], timeout_s: float = 180
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if child.poll() is not None:
            raise RuntimeError(f"the service exited with {child.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise RuntimeError("the service did not become ready")


def unit_vectors(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, DIM)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def time_calls(
    call: Callable[[], httpx.Response], requests: int, warmup: int
) -> dict[str, Any]:
    for _ in range(warmup):
        call().raise_for_status()
    samples_ms = []
    served: dict[str, int] = {}
    for _ in range(requests):
        started = time.perf_counter()
        response = call()
        samples_ms.append((time.perf_counter() - started) * 1000.0)
        response.raise_for_status()
        for item in response.headers.get("X-Tiermem-Served-By", "").split(","):
            tier, _, count = item.partition("=")
            if count.isdigit():
                served[tier] = served.get(tier, 0) + int(count)
    values = np.array(samples_ms)
    return {
        "requests": requests,
        "p50_ms": float(np.percentile(values, 50)),
        "p99_ms": float(np.percentile(values, 99)),
        "max_ms": float(values.max()),
        "served_by": served,
        "meets_target": bool(np.percentile(values, 99) <= TARGET_MS),
    }


def prepare(client: httpx.Client, rows: int) -> np.ndarray:
    """Write `rows` vectors to namespace bench and check they read back."""
    vectors = unit_vectors(rows, 7)
    for start in range(0, rows, 1000):
        items = [
            {"key": f"k{i}", "vector": vectors[i].tolist()}
            for i in range(start, min(rows, start + 1000))
        ]
        client.put(
            "/v1/vectors", json={"namespace": "bench", "items": items}
        ).raise_for_status()
    probe = client.post(
        "/v1/lookup",
        json={"namespace": "bench", "keys": ["k0", "k1"], "encoding_format": "base64"},
    ).json()
    got = np.frombuffer(base64.b64decode(probe["items"][1]["vector"]), "<f4")
    if not np.allclose(got, vectors[1], atol=1e-6):
        raise AssertionError("lookup returned a different vector than was written")
    return vectors


def check_search(client: httpx.Client, vectors: np.ndarray) -> None:
    """The nearest neighbour of a stored vector is itself."""
    body = {"namespace": "bench", "vector": vectors[3].tolist(), "k": 5}
    found = client.post("/v1/memories/search", json=body).json()
    if found["results"][0]["id"] != "k3":
        raise AssertionError(f"search did not find k3 first: {found['results'][:2]}")


def run(url: str, requests: int, rows: int) -> dict[str, Any]:
    rng = np.random.default_rng(1)
    with httpx.Client(base_url=url, timeout=60) as client:
        vectors = prepare(client, rows)
        check_search(client, vectors)
        keys = [f"k{i}" for i in rng.integers(0, rows, 32)]
        fresh = iter(range(10**9))
        cases = {
            "embed 1 text, cold (model)": lambda: client.post(
                "/v1/embeddings", json={"input": f"a new sentence number {next(fresh)}"}
            ),
            "embed 1 text, cached": lambda: client.post(
                "/v1/embeddings", json={"input": "the same sentence every time"}
            ),
            "embed 32 texts, cached": lambda: client.post(
                "/v1/embeddings",
                json={"input": [f"cached text {i}" for i in range(32)]},
            ),
            "lookup 32 keys, float": lambda: client.post(
                "/v1/lookup", json={"namespace": "bench", "keys": keys}
            ),
            "lookup 32 keys, base64": lambda: client.post(
                "/v1/lookup",
                json={"namespace": "bench", "keys": keys, "encoding_format": "base64"},
            ),
            f"search k=10 over {rows} rows": lambda: client.post(
                "/v1/memories/search",
                json={
                    "namespace": "bench",
                    "vector": vectors[rng.integers(rows)].tolist(),
                },
            ),
        }
        results = {
            name: time_calls(call, requests, warmup=20) for name, call in cases.items()
        }
        tiers = client.get("/v1/tiers").json()["tiers"]
    return {
        "target_ms": TARGET_MS,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "date": time.strftime("%Y-%m-%d"),
        "rows": rows,
        "results": results,
        "tiers": {
            t["name"]: {"p50_ms": t["p50_ms"], "p99_ms": t["p99_ms"]} for t in tiers
        },
    }


def print_table(report: dict[str, Any]) -> None:
    print(f"\ntarget: p99 <= {report['target_ms']:.0f} ms   ({report['machine']})")
    print(
        f"{'operation':34} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}  target  served by"
    )
    for name, row in report["results"].items():
        served = ",".join(f"{k}={v}" for k, v in row["served_by"].items())
        verdict = "met" if row["meets_target"] else "MISSED"
        print(
            f"{name:34} {row['p50_ms']:8.2f} {row['p99_ms']:8.2f} {row['max_ms']:8.2f}"
            f"  {verdict:6}  {served}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tiermem bench", description=__doc__)
    parser.add_argument("--url", help="a running service; default: start one")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument(
        "--out", type=Path, default=Path("benchmarks/results/latency.json")
    )
    args = parser.parse_args(argv)

    if args.url:
        report = run(args.url, args.requests, args.rows)
    else:
        with started_service() as url:
            report = run(url, args.requests, args.rows)
    print_table(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
