"""Key placement on the ring: position = MD5(key) as a 128-bit integer; Q equal partitions.

Clients place keys too, so the hash itself lives in the protocol (`dynd.protocol.keyspace`); the
core's modules import it from here, under the core's own name for it.
"""

from __future__ import annotations

from dynd.protocol.keyspace import POSITION_BITS, check_partition_count, partition_of, ring_position

__all__ = ["POSITION_BITS", "check_partition_count", "partition_of", "ring_position"]
