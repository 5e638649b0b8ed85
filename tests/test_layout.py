"""Only kernels/ talks to the GPU through CuPy; the rest asks it for kernels."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_no_module_outside_kernels_imports_cupy() -> None:
    offenders = [
        str(path.relative_to(ROOT))
        for package in ("app", "memory_tiers")
        for path in (ROOT / package).rglob("*.py")
        if any(
            name.split(".")[0] in {"cupy", "cupyx"} for name in imported_modules(path)
        )
    ]

    assert offenders == []


def test_the_rule_sees_the_kernels_that_do_import_cupy() -> None:
    assert "cupy" in imported_modules(ROOT / "kernels" / "cupy_backend.py")
