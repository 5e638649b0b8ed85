"""Shared fixtures: a real PostgreSQL with pgvector and a running service.

Everything runs on CPU. Servers start on free ports (or private Unix sockets)
under pytest's temporary directory and stop when the session ends.
"""

from __future__ import annotations

import os
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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
    postgres_dsn: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceThread]:
    """One running service for the API tests, on the session's PostgreSQL."""
    data_dir: Path = tmp_path_factory.mktemp("data")
    with ServiceThread(postgres_dsn=postgres_dsn, data_dir=data_dir) as running:
        yield running


@pytest.fixture
def client(service: ServiceThread) -> Iterator[object]:
    import httpx

    with httpx.Client(base_url=service.url, timeout=60) as http:
        yield http
