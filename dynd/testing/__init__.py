"""Test doubles of the node's ports, shipped with the package as trio ships `trio.testing`.

`MemoryStorage` is the core's Storage port in memory, with commits under the test's control;
`dynd.testing.storage_conformance` holds the checks every Storage implementation must pass.
"""

from __future__ import annotations

from dynd.testing.storage import MemoryStorage

__all__ = ["MemoryStorage"]
