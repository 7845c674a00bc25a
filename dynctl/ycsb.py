"""YCSB's core workloads for `dynctl bench`: the operation mixes and the key choosers.

Pure: randomness comes in as a `random.Random`, so a seeded run draws the same keys.

The key choosers follow YCSB's (Cooper et al., SoCC 2010, and its `ZipfianGenerator` after Gray et
al., "Quickly generating billion-record synthetic databases", SIGMOD 1994):
- `Zipfian`: item i (0 is the most popular) with probability proportional to 1/(i+1)^theta,
  theta = 0.99 as in YCSB. The item count may grow (workload D inserts); zeta is extended
  incrementally, as YCSB does, so growing by one costs one term.
- `ScrambledZipfian`: the same popularity, spread over the key space by a 64-bit FNV-1a hash of the
  rank (YCSB's `fnvhash64`), so the hot keys are not neighbours. Unlike YCSB, which draws ranks from
  ten billion items with a constant zeta and folds them modulo the key count, this draws ranks from
  exactly the key count and then hashes: the skew is the same and no constant is needed. As in YCSB,
  two ranks may land on one key, so a few keys are never chosen.
- `SkewedLatest`: YCSB's "latest": the newest key is the most popular, a zipfian distance back from it.

Workload E (short range scans) is left out: a Dynamo has no ordered scans.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass

ZIPFIAN_CONSTANT = 0.99  # YCSB's default theta
FNV_OFFSET_BASIS_64 = 0xCBF29CE484222325
FNV_PRIME_64 = 0x100000001B3
_MASK_64 = (1 << 64) - 1


class Op(enum.StrEnum):
    read = "read"
    update = "update"
    insert = "insert"
    rmw = "rmw"  # read-modify-write: a read, then an update carrying the read's context


class Distribution(enum.StrEnum):
    zipfian = "zipfian"
    latest = "latest"


@dataclass(frozen=True, slots=True)
class Mix:
    """One YCSB core workload: the share of each operation and how keys are chosen."""

    name: str
    shares: tuple[tuple[Op, float], ...]
    distribution: Distribution

    def choose(self, rng: random.Random) -> Op:
        draw = rng.random()
        for op, share in self.shares:
            draw -= share
            if draw < 0:
                return op
        return self.shares[-1][0]


CORE_WORKLOADS: dict[str, Mix] = {
    "a": Mix("a", ((Op.read, 0.5), (Op.update, 0.5)), Distribution.zipfian),
    "b": Mix("b", ((Op.read, 0.95), (Op.update, 0.05)), Distribution.zipfian),
    "c": Mix("c", ((Op.read, 1.0),), Distribution.zipfian),
    "d": Mix("d", ((Op.read, 0.95), (Op.insert, 0.05)), Distribution.latest),
    "f": Mix("f", ((Op.read, 0.5), (Op.rmw, 0.5)), Distribution.zipfian),
}


def zeta(start: int, stop: int, theta: float, initial: float = 0.0) -> float:
    """`initial` plus the sum of 1/i^theta for i in (start, stop]: zeta(n) = zeta(0, n, theta)."""
    total = initial
    for i in range(start + 1, stop + 1):
        total += 1.0 / i**theta
    return total


class Zipfian:
    """Ranks 0..items-1, rank 0 the most popular (YCSB's `ZipfianGenerator`)."""

    def __init__(self, items: int, theta: float = ZIPFIAN_CONSTANT) -> None:
        if items < 1:
            raise ValueError("a zipfian distribution needs at least one item")
        if not 0 < theta < 1:
            raise ValueError("theta must be between 0 and 1 (exclusive)")
        self.theta = theta
        self._alpha = 1.0 / (1.0 - theta)
        self._zeta2 = zeta(0, 2, theta)
        self._half_pow_theta = 0.5**theta
        self.items = 0
        self._zetan = 0.0
        self._eta = 0.0
        self._grow(items)

    def _grow(self, items: int) -> None:
        self._zetan = zeta(self.items, items, self.theta, self._zetan)
        self.items = items
        # eta is undefined for a single item (0/0); every draw then returns rank 0 anyway.
        if items > 1:
            self._eta = (1.0 - (2.0 / items) ** (1.0 - self.theta)) / (1.0 - self._zeta2 / self._zetan)

    def next(self, rng: random.Random, items: int | None = None) -> int:
        """A rank in [0, items); `items` (default: as constructed) may only grow."""
        if items is not None and items != self.items:
            if items < self.items:
                raise ValueError("the item count of a zipfian distribution may only grow")
            self._grow(items)
        u = rng.random()
        uz = u * self._zetan
        if uz < 1.0:
            return 0
        if uz < 1.0 + self._half_pow_theta:
            return min(1, self.items - 1)
        return min(int(self.items * (self._eta * u - self._eta + 1.0) ** self._alpha), self.items - 1)


def fnv1a_64(value: int) -> int:
    """YCSB's `fnvhash64`: FNV-1a over the eight little-endian bytes of `value`, unsigned here."""
    hashed = FNV_OFFSET_BASIS_64
    for _ in range(8):
        hashed ^= value & 0xFF
        hashed = (hashed * FNV_PRIME_64) & _MASK_64
        value >>= 8
    return hashed


class ScrambledZipfian:
    """Zipfian popularity scattered over the items by a hash of the rank."""

    def __init__(self, items: int, theta: float = ZIPFIAN_CONSTANT) -> None:
        self._ranks = Zipfian(items, theta)

    def next(self, rng: random.Random) -> int:
        return fnv1a_64(self._ranks.next(rng)) % self._ranks.items


class SkewedLatest:
    """Item `items - 1` (the newest) most popular, older ones by zipfian distance from it."""

    def __init__(self, items: int, theta: float = ZIPFIAN_CONSTANT) -> None:
        self._distance = Zipfian(items, theta)

    def next(self, rng: random.Random, items: int) -> int:
        return items - 1 - self._distance.next(rng, items)
