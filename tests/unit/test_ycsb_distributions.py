"""The key choosers of `dynctl bench`'s YCSB workloads draw what YCSB's draw."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from dynctl.ycsb import CORE_WORKLOADS, Op, ScrambledZipfian, SkewedLatest, Zipfian, fnv1a_64, zeta

DRAWS = 200_000


def zipf_probability(rank: int, items: int, theta: float = 0.99) -> float:
    return (1.0 / (rank + 1) ** theta) / zeta(0, items, theta)


def test_zipfian_ranks_follow_the_zipf_law_with_theta_099() -> None:
    items = 1000
    rng = random.Random(7)
    chooser = Zipfian(items)
    counts = Counter(chooser.next(rng) for _ in range(DRAWS))
    assert min(counts) >= 0 and max(counts) < items
    # The head, where Gray's approximation is exact for ranks 0 and 1 and close after.
    for rank in (0, 1):
        expected = zipf_probability(rank, items) * DRAWS
        assert abs(counts[rank] - expected) < 5 * expected**0.5, (rank, counts[rank], expected)
    # Mass of the top 10% of ranks against the law (theta 0.99 over 1000 items: about 0.69).
    top = sum(counts[rank] for rank in range(items // 10)) / DRAWS
    expected_top = sum(zipf_probability(rank, items) for rank in range(items // 10))
    assert abs(top - expected_top) < 0.03, (top, expected_top)
    # Rank 0 is drawn far more often than a rank in the tail.
    assert counts[0] > 50 * max(1, counts[900])


def test_zipfian_grows_incrementally_to_the_same_zeta_as_built_at_that_size() -> None:
    grown = Zipfian(10)
    rng = random.Random(1)
    grown.next(rng, 500)
    assert grown.items == 500
    assert grown._zetan == pytest.approx(Zipfian(500)._zetan)
    with pytest.raises(ValueError):
        grown.next(rng, 100)


def test_scrambled_zipfian_spreads_the_hot_keys_but_keeps_the_skew() -> None:
    items = 1000
    rng = random.Random(3)
    chooser = ScrambledZipfian(items)
    counts = Counter(chooser.next(rng) for _ in range(DRAWS))
    hottest = [key for key, _ in counts.most_common(5)]
    assert hottest[0] == fnv1a_64(0) % items  # rank 0, hashed
    assert max(hottest) - min(hottest) > 50  # not neighbours, as plain zipfian's 0..4 would be
    assert counts.most_common(1)[0][1] / DRAWS > 0.1  # rank 0 alone takes about 13% at theta 0.99


def fnv1a_64_of_bytes(data: bytes) -> int:
    hashed = 0xCBF29CE484222325
    for octet in data:
        hashed = ((hashed ^ octet) * 0x100000001B3) & ((1 << 64) - 1)
    return hashed


def test_fnv_hash_is_fnv1a_over_the_little_endian_bytes_as_in_ycsb() -> None:
    assert fnv1a_64_of_bytes(b"a") == 0xAF63DC4C8601EC8C  # the published FNV-1a 64 test vector
    for value in (0, 1, 255, 256, 123_456_789, 2**63 - 1):
        assert fnv1a_64(value) == fnv1a_64_of_bytes(value.to_bytes(8, "little"))


def test_skewed_latest_prefers_the_newest_items() -> None:
    rng = random.Random(5)
    latest = SkewedLatest(100)
    draws = [latest.next(rng, 100) for _ in range(20_000)]
    assert all(0 <= draw < 100 for draw in draws)
    counts = Counter(draws)
    assert counts.most_common(1)[0][0] == 99
    assert counts[99] > counts[90] > counts[10]
    grown = [latest.next(rng, 150) for _ in range(5_000)]
    assert Counter(grown).most_common(1)[0][0] == 149


@pytest.mark.parametrize(
    ("name", "shares"),
    [("a", {Op.read: 0.5, Op.update: 0.5}), ("b", {Op.read: 0.95, Op.update: 0.05}), ("c", {Op.read: 1.0}),
     ("d", {Op.read: 0.95, Op.insert: 0.05}), ("f", {Op.read: 0.5, Op.rmw: 0.5})],
)  # fmt: skip
def test_core_workload_mixes_draw_their_shares(name: str, shares: dict[Op, float]) -> None:
    rng = random.Random(11)
    mix = CORE_WORKLOADS[name]
    counts = Counter(mix.choose(rng) for _ in range(50_000))
    assert set(counts) == set(shares)
    for op, share in shares.items():
        assert abs(counts[op] / 50_000 - share) < 0.01
