"""Imports flow one way: protocol <- core <- {storage, sim, shell} <- cli; dynctl sees protocol and client only."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

FORBIDDEN: dict[str, tuple[str, ...]] = {
    "dynd/protocol": ("dynd.core", "dynd.storage", "dynd.shell", "dynd.sim", "dynd.client", "dynd.cli", "dynd.config", "trio", "lmdb", "socket", "time", "threading", "asyncio"),
    "dynd/core": ("dynd.storage", "dynd.shell", "dynd.sim", "dynd.client", "dynd.cli", "dynd.config", "trio", "lmdb", "socket", "time", "threading", "asyncio", "random"),
    "dynd/storage": ("dynd.shell", "dynd.sim", "dynd.client", "dynd.cli", "trio"),
    # The shipped test doubles and checks run under any test runner: synchronous, no event loop.
    "dynd/testing": ("dynd.shell", "dynd.sim", "dynd.client", "dynd.cli", "dynd.config", "trio", "lmdb", "socket", "time", "threading", "asyncio", "random"),
    "dynctl": ("dynd.core", "dynd.storage", "dynd.shell", "dynd.sim", "dynd.cli", "dynd.config", "dynd.__main__"),
}


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            # `from dynd import core` imports the module dynd.core: check it under that name too.
            names.update(f"{node.module}.{alias.name}" for alias in node.names if alias.name != "*")
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_respect_the_layers(package: str) -> None:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"no sources under {package}"
    violations = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in files
        for name in imported_modules(path)
        if any(name == banned or name.startswith(banned + ".") for banned in FORBIDDEN[package])
    ]
    assert violations == []


DYNCTL_MAY_USE = ("dynd.protocol", "dynd.client", "dynd.__version__")


def test_dynctl_uses_only_the_protocol_and_the_client() -> None:
    """An allow-list, so a dynd module added later is kept out of dynctl too."""
    violations = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in sorted((ROOT / "dynctl").rglob("*.py"))
        for name in imported_modules(path)
        if (name == "dynd" or name.startswith("dynd."))
        and name != "dynd"
        and not any(name == allowed or name.startswith(allowed + ".") for allowed in DYNCTL_MAY_USE)
    ]
    assert violations == []
