"""Service settings, read from TIERMEM_* environment variables."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ENV_PREFIX = "TIERMEM_"


class SettingsError(ValueError):
    """A TIERMEM_* variable holds a value the service cannot start with."""


class Settings(BaseSettings):
    """Every knob of the service; each field is TIERMEM_<FIELD NAME> in the env."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    data_dir: Path = Path(".tiermem")
    log_level: str = "info"

    # Resident tiers. Budgets are bytes of array memory, allocated once at start.
    # Unset: hbm_fraction of the GPU's free memory at start (256 MiB without one).
    hbm_bytes: int | None = Field(None, ge=0)
    hbm_fraction: float = Field(0.5, gt=0, le=0.95)
    host_bytes: int = Field(1024 * 2**20, ge=0)
    resident_dims: Annotated[list[int], NoDecode] = [384]
    admission_window_s: float = Field(300.0, gt=0)
    hbm_pinned_namespaces: Annotated[list[str], NoDecode] = []
    resident_max_rows: int = Field(1_000_000, ge=0)

    # System of record. Unset: an embedded PostgreSQL under data_dir.
    postgres_dsn: SecretStr | None = None
    postgres_pool_max: int = Field(8, ge=1, le=256)
    hnsw_ef_search: int = Field(100, ge=1, le=1000)
    derived_flush_ms: float = Field(200.0, gt=0)

    # T2. Unset: an embedded Redis-protocol server on a free local port.
    redis_url: SecretStr | None = None
    redis_ttl_s: float = Field(3600.0, gt=0)
    # JSON object: namespace (or prefix ending in "*") -> TTL in seconds.
    redis_namespace_ttl_s: dict[str, float] = {}

    # T4. With no Snowflake account set: an embedded DuckDB file under data_dir.
    snowflake_account: str | None = None
    snowflake_user: str | None = None
    snowflake_password: SecretStr | None = None
    snowflake_private_key_path: Path | None = None
    snowflake_warehouse: str | None = None
    snowflake_database: str | None = None
    snowflake_schema: str | None = None
    snowflake_role: str | None = None
    # SQL with one `?` (a JSON array of keys) returning key and vector columns,
    # read for keys that tiermem's own table lacks.
    warehouse_source_query: str | None = None

    # T5. s3://bucket/prefix or file:///path. Unset: a directory under data_dir.
    # S3 credentials come from the usual AWS_* variables.
    object_url: str | None = None
    object_endpoint: str | None = None
    object_allow_http: bool = False

    # Export from the outbox to T4 and T5, and coherence between replicas.
    export_batch: int = Field(256, ge=1, le=100_000)
    # Names this replica in logs; a process-unique suffix is added on the
    # invalidation channel, so two processes never mistake each other for self.
    replica_id: str = Field(default_factory=socket.gethostname, min_length=1)
    # The snapshot this replica writes on stop and warms from on start. Replicas
    # of one pool may share it (every restored row is checked against
    # PostgreSQL); unset, it is the replica id.
    snapshot_name: str | None = None
    snapshot_on_stop: bool = True
    warm_on_start: bool = True

    # Host headers the MCP endpoint answers (host:port, "*" for any port); the
    # MCP SDK refuses others, a guard against DNS rebinding.
    mcp_allowed_hosts: Annotated[list[str], NoDecode] = [
        "127.0.0.1:*",
        "localhost:*",
        "[::1]:*",
    ]

    # Inference.
    model_name: str = "all-MiniLM-L6-v2"
    max_batch_size: int = Field(64, ge=1, le=4096)
    max_batch_wait_ms: float = Field(5.0, ge=0, le=1000)
    max_seq_tokens: int = Field(256, ge=8, le=512)

    # Request limits, enforced at the edge.
    deadline_ms: float = Field(50.0, gt=0, le=600_000)
    max_batch_items: int = Field(2048, ge=1)
    max_text_chars: int = Field(20_000, ge=1)
    max_k: int = Field(100, ge=1, le=10_000)
    max_dim: int = Field(4096, ge=1, le=16_000)

    @field_validator("data_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        # Embedded servers change directory; relative paths would drift.
        return value.expanduser().resolve()

    @field_validator("resident_dims", mode="before")
    @classmethod
    def _split_ints(cls, value: object) -> object:
        if isinstance(value, str):
            return [int(part) for part in value.split(",") if part.strip()]
        return value

    @field_validator("hbm_pinned_namespaces", "mcp_allowed_hosts", mode="before")
    @classmethod
    def _split_names(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment.

    Raises SettingsError naming the TIERMEM_* variable and the bad value.
    """
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            field = str(error["loc"][0]) if error["loc"] else "?"
            variable = ENV_PREFIX + field.upper()
            problems.append(f"{variable}={error.get('input')!r}: {error['msg']}")
        raise SettingsError("; ".join(problems)) from None
