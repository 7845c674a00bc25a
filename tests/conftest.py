"""Fixtures shared by the tests that run real `dynd` processes.

`dynd_factory` makes `DyndProcess` objects under the test's tmp_path and stops every one of them at
teardown, printing each node's stderr tail (pytest shows it only when the test failed).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    # `python -m pytest` puts the repository on sys.path; a bare `pytest` does not, and the tests
    # import their helpers as `tests.support`.
    sys.path.insert(0, str(ROOT))

from tests.support.procs import DyndFactory, DyndProcess  # noqa: E402


@pytest.fixture
def dynd_factory(tmp_path: Path) -> Iterator[DyndFactory]:
    """`make(name="n1", *, config_text=None, start=True, **kwargs) -> DyndProcess`."""
    nodes: list[DyndProcess] = []

    def make(name: str = "n1", *, config_text: str | None = None, start: bool = True, **kwargs: Any) -> DyndProcess:
        node = DyndProcess(tmp_path / f"{name}-{len(nodes)}", name=name, config_text=config_text, **kwargs)
        nodes.append(node)
        if start:
            node.start()
        return node

    yield make
    for node in nodes:
        node.stop()
        print(f"--- {node!r} stderr (last lines) ---\n{node.stderr_tail()}")


@pytest.fixture(autouse=True)
def _dynd_log_level_restored() -> Iterator[None]:
    """Some tools quiet the dynd loggers (the simulator's and the scale bench's main); a test that
    runs one must not leave the loggers of every later test at that level."""
    logger = logging.getLogger("dynd")
    level = logger.level
    yield
    logger.setLevel(level)
