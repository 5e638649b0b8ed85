"""Settings come from TIERMEM_* variables; a bad one is named with its value."""

from __future__ import annotations

import pytest

from app.cli import main
from app.settings import SettingsError, load_settings


def test_defaults_load_without_any_variable() -> None:
    settings = load_settings()

    assert settings.port == 8000
    assert settings.deadline_ms == 50.0
    assert settings.hbm_bytes is None  # a fraction of the GPU's free memory


def test_variables_override_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIERMEM_HBM_BYTES", "1048576")
    monkeypatch.setenv("TIERMEM_RESIDENT_DIMS", "384,768")
    ttls = '{"sessions": 60, "emb:*": 86400}'
    monkeypatch.setenv("TIERMEM_REDIS_NAMESPACE_TTL_S", ttls)

    settings = load_settings()

    assert settings.hbm_bytes == 1048576
    assert settings.resident_dims == [384, 768]
    assert settings.redis_namespace_ttl_s == {"sessions": 60.0, "emb:*": 86400.0}


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("TIERMEM_PORT", "70000"),
        ("TIERMEM_HBM_BYTES", "lots"),
        ("TIERMEM_DEADLINE_MS", "-1"),
    ],
)
def test_a_bad_variable_is_named_with_its_value(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)

    with pytest.raises(SettingsError) as raised:
        load_settings()

    assert variable in str(raised.value)
    assert repr(value) in str(raised.value)


def test_without_a_gpu_t0_gets_the_cpu_default_budget() -> None:
    from app.runtime import CPU_HBM_BYTES, hbm_budget

    assert hbm_budget(load_settings()) == CPU_HBM_BYTES
    assert hbm_budget(load_settings(hbm_bytes=12345)) == 12345


def test_check_config_exits_2_on_a_bad_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TIERMEM_PORT", "0")

    assert main(["check-config"]) == 2
    assert "TIERMEM_PORT" in capsys.readouterr().err


def test_the_postgres_dsn_is_redacted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIERMEM_POSTGRES_DSN", "postgresql://u:hunter2@db/x")

    assert "hunter2" not in repr(load_settings())


def test_bench_takes_its_own_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["bench", "--help"])

    assert exited.value.code == 0
    assert "--requests" in capsys.readouterr().out
