"""Imports flow one way: protocol <- core <- {storage, sim, shell} <- cli; dynctl sees protocol and client only.

The layers, and why:
- `dynd/protocol`: the wire (messages, codec, framing, errors) and what both ends share (hello
  credentials, the sans-IO TLS layer, the key-to-partition hash). Imports no other part of dynd.
- `dynd/core`: the pure node, events in and effects out: no I/O, no clock, no randomness of its own.
- `dynd/storage`: the engines (LMDB, memory); sees the core's op and limit types.
- `dynd/sim`: many cores in one process on a virtual clock, every choice drawn from the seed: no
  trio, sockets, threads or real time. Only the driver (`run.py`, `__main__.py`) reads
  `time.perf_counter`, to report how long a seed took to run; nothing it reads reaches a node.
- `dynd/shell`: the trio daemon around the core; it dials its peers with the client library's
  connection (`dynd.shell.peer_transport`), so it may import `dynd.client`.
- `dynd/client`: the public client library, over the protocol alone, so `dynctl` and applications
  load nothing of the node.
- `dynd/testing`: test doubles of the core's ports, shipped with the package: core, protocol and
  storage only, synchronous like the core.
- `dynctl`: the protocol and the client (an allow-list, below).
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

FORBIDDEN: dict[str, tuple[str, ...]] = {
    "dynd/protocol": ("dynd.core", "dynd.storage", "dynd.shell", "dynd.sim", "dynd.client", "dynd.cli", "dynd.config", "dynd.testing", "trio", "lmdb", "socket", "time", "threading", "asyncio"),
    "dynd/core": ("dynd.storage", "dynd.shell", "dynd.sim", "dynd.client", "dynd.cli", "dynd.config", "dynd.testing", "trio", "lmdb", "socket", "time", "threading", "asyncio", "random"),
    "dynd/storage": ("dynd.shell", "dynd.sim", "dynd.client", "dynd.cli", "dynd.testing", "trio"),
    "dynd/sim": ("dynd.shell", "dynd.client", "dynd.cli", "dynd.config", "dynd.testing", "trio", "lmdb", "socket", "time", "threading", "asyncio"),
    "dynd/shell": ("dynd.sim", "dynd.cli", "dynd.config", "dynd.testing", "dynctl"),
    "dynd/client": ("dynd.core", "dynd.storage", "dynd.shell", "dynd.sim", "dynd.cli", "dynd.config", "dynd.testing", "lmdb"),
    # The shipped test doubles and checks run under any test runner: synchronous, no event loop.
    "dynd/testing": ("dynd.shell", "dynd.sim", "dynd.client", "dynd.cli", "dynd.config", "trio", "lmdb", "socket", "time", "threading", "asyncio", "random"),
    "dynctl": ("dynd.core", "dynd.storage", "dynd.shell", "dynd.sim", "dynd.cli", "dynd.config", "dynd.testing", "dynd.__main__"),
}

# (file, module) pairs allowed despite FORBIDDEN, each for a reason stated in the module docstring.
EXEMPT: frozenset[tuple[str, str]] = frozenset(
    {
        ("dynd/sim/run.py", "time"),  # the wall time a seed took, for the report only
        ("dynd/sim/__main__.py", "time"),  # the wall time of the whole run, for the summary only
    }
)

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


def _sources(package: str) -> list[Path]:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"no sources under {package}"
    return files


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_respect_the_layers(package: str) -> None:
    violations = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in _sources(package)
        for name in imported_modules(path)
        if any(name == banned or name.startswith(banned + ".") for banned in FORBIDDEN[package])
        and (str(path.relative_to(ROOT)), name) not in EXEMPT
    ]
    assert violations == []


DYNCTL_MAY_USE = ("dynd.protocol", "dynd.client", "dynd.__version__")

# The dynd packages each layer may import besides its own: an allow-list, so a package added later
# is kept out until the layering says where it sits.
MAY_USE: dict[str, tuple[str, ...]] = {
    "dynd/protocol": (),
    "dynd/core": ("dynd.protocol",),
    "dynd/storage": ("dynd.protocol", "dynd.core"),
    "dynd/sim": ("dynd.protocol", "dynd.core", "dynd.storage"),
    "dynd/shell": ("dynd.protocol", "dynd.core", "dynd.storage", "dynd.client"),
    "dynd/client": ("dynd.protocol",),
    "dynd/testing": ("dynd.protocol", "dynd.core", "dynd.storage"),
    "dynctl": DYNCTL_MAY_USE,
}


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


@pytest.mark.parametrize("package", sorted(MAY_USE))
def test_each_layer_uses_only_the_layers_below_it(package: str) -> None:
    own = package.replace("/", ".")
    allowed = (own, *MAY_USE[package])
    violations = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in _sources(package)
        for name in imported_modules(path)
        if name.startswith("dynd.") and not any(name == a or name.startswith(a + ".") for a in allowed)
    ]
    assert violations == []


def test_every_package_of_dynd_has_a_place_in_the_layering() -> None:
    """A new package under dynd/ must be added to the tables above before it can be imported."""
    packages = {f"dynd/{path.parent.name}" for path in (ROOT / "dynd").glob("*/__init__.py")}
    assert packages <= set(MAY_USE) & set(FORBIDDEN)


def test_importing_dynctl_loads_nothing_of_the_node() -> None:
    """What the source says, checked on what Python actually loads: the app and every command
    module, in a fresh interpreter (tests may have imported the node into this one)."""
    modules = sorted(f"dynctl.{path.stem}" for path in (ROOT / "dynctl").glob("*.py") if path.stem != "__main__")
    assert "dynctl.app" in modules and "dynctl.kv" in modules
    script = textwrap.dedent(
        f"""
        import importlib, sys
        for name in {modules!r}:
            importlib.import_module(name)
        node = ("dynd.core", "dynd.storage", "dynd.shell", "dynd.sim", "dynd.cli", "dynd.config", "dynd.testing")
        print("\\n".join(sorted(m for m in sys.modules if any(m == n or m.startswith(n + ".") for n in node))))
        """
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == []
