"""Shared fixtures: a real PostgreSQL with pgvector and a running service.

Everything runs on CPU. Servers start on free ports (or private Unix sockets)
under pytest's temporary directory and stop when the session ends.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest

from memory_tiers.embedded_servers import EmbeddedRedis, start_redis

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


S3_CREDENTIALS = {
    "access_key_id": "testing",
    "secret_access_key": "testing",
    "region": "us-east-1",
}


@dataclass(frozen=True)
class S3Server:
    """A moto S3 endpoint with one bucket, and the ObjectTier options for it."""

    endpoint: str
    bucket: str
    server: Any

    @property
    def options(self) -> dict[str, Any]:
        return {
            **S3_CREDENTIALS,
            "endpoint": self.endpoint,
            "allow_http": True,
            # moto on 127.0.0.1 has no bucket subdomains.
            "virtual_hosted_style_request": False,
        }

    def url(self, prefix: str = "") -> str:
        return f"s3://{self.bucket}/{prefix}"


def start_s3() -> S3Server:
    """A moto server on a free port with bucket "tiermem" created."""
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )
    client.create_bucket(Bucket="tiermem")
    return S3Server(endpoint=endpoint, bucket="tiermem", server=server)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    """A real Redis-protocol server for the whole session."""
    with start_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """moto's S3 over HTTP on 127.0.0.1, shared by the session."""
    s3 = start_s3()
    yield s3
    s3.server.stop()


@pytest.fixture(scope="session")
def postgres_dsn() -> Iterator[str]:
    """A real embedded PostgreSQL + pgvector for the whole session."""
    from memory_tiers.embedded import EmbeddedPostgres

    # PostgreSQL runs as its own system user when the tests run as root, and
    # pytest's temporary directories are private to the test user.
    with tempfile.TemporaryDirectory(prefix="tiermem-pg-") as base:
        os.chmod(base, 0o755)
        server = EmbeddedPostgres(Path(base))
        yield server.dsn
        server.stop()


@pytest.fixture
def private_dsn(postgres_dsn: str) -> Iterator[str]:
    """A database of this test's own on the session's server.

    For tests that must be the only reader of the outbox: the session's
    running service exports from the shared database's outbox as well.
    """
    import asyncio

    import asyncpg

    name = "t" + uuid.uuid4().hex[:16]
    parts = urlsplit(postgres_dsn)
    dsn = urlunsplit(parts._replace(path=f"/{name}"))

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(postgres_dsn)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    yield dsn
    asyncio.run(admin(f'DROP DATABASE "{name}" WITH (FORCE)'))


@pytest.fixture
def namespace() -> str:
    """A namespace no other test touches."""
    return "t" + uuid.uuid4().hex[:12]


class ServiceThread:
    """The real app served by uvicorn on a free port, in a background thread."""

    def __init__(self, **overrides: object) -> None:
        import uvicorn

        from app.main import create_app
        from app.settings import load_settings

        self.settings = load_settings(**overrides)
        self.app = create_app(self.settings)
        self.port = free_port()
        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=self.port, log_level="warning"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ServiceThread:
        self.thread.start()
        deadline = time.monotonic() + 120
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the service did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)


@pytest.fixture(scope="session")
def service(
    postgres_dsn: str,
    redis_server: EmbeddedRedis,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServiceThread]:
    """One running service for the API tests, on the session's servers.

    The warehouse (DuckDB) and object storage (a directory) are embedded.
    """
    data_dir: Path = tmp_path_factory.mktemp("data")
    with ServiceThread(
        postgres_dsn=postgres_dsn, redis_url=redis_server.url, data_dir=data_dir
    ) as running:
        yield running


@pytest.fixture
def client(service: ServiceThread) -> Iterator[httpx.Client]:
    """An HTTP client with a generous deadline: on a loaded 2-core machine the
    default 50 ms would turn slow-tier misses into `pending` at random. Tests
    of the deadline itself set their own header."""
    headers = {"X-Tiermem-Deadline-Ms": "30000"}
    with httpx.Client(base_url=service.url, timeout=60, headers=headers) as http:
        yield http


class ServiceProcess:
    """`tiermem serve` as a child process, configured through TIERMEM_* vars."""

    def __init__(self, **settings: object) -> None:
        self.port = free_port()
        self.env = {**os.environ, "TIERMEM_PORT": str(self.port)}
        self.env.update({f"TIERMEM_{k.upper()}": str(v) for k, v in settings.items()})
        self.child: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ServiceProcess:
        command = [sys.executable, "-m", "app.cli", "serve"]
        self.child = subprocess.Popen(command, env=self.env)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.child.poll() is not None:
                raise RuntimeError(f"tiermem exited with {self.child.returncode}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.__exit__()
        raise RuntimeError("tiermem did not become ready")

    def __exit__(self, *exc: object) -> None:
        if self.child is not None:
            self.child.terminate()
            self.child.wait(timeout=60)
