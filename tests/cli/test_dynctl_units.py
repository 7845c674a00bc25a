"""The pure parts of dynctl (the rule that it uses only dynd's protocol and client is in tests/unit/test_layering.py)."""

from __future__ import annotations

from array import array

import pytest

from dynctl.bench import keys_of_worker, percentile, summarize_latencies_ms
from dynctl.tokens import BadToken, decode_token, encode_token


@pytest.mark.parametrize("context", [b"", b"\x00", b"\xff\xfe", bytes(range(256))])
def test_tokens_round_trip_without_padding(context: bytes) -> None:
    token = encode_token(context)
    assert "=" not in token and "+" not in token and "/" not in token
    assert decode_token(token) == context


@pytest.mark.parametrize("token", ["a+b", "a/b", "ab==", "abcde", "ab cd", "é"])
def test_tokens_outside_unpadded_base64url_are_refused(token: str) -> None:
    with pytest.raises(BadToken):
        decode_token(token)


def test_workers_own_disjoint_keys_that_cover_every_key() -> None:
    owned = [list(keys_of_worker(worker, 3, 10)) for worker in range(3)]
    assert owned == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]


def test_percentiles_use_the_nearest_rank() -> None:
    values = [float(v) for v in range(1, 1001)]
    assert percentile(values, 0.5) == 500.0
    assert percentile(values, 0.99) == 990.0
    assert percentile(values, 0.999) == 999.0
    assert percentile([], 0.5) is None
    summary = summarize_latencies_ms(array("d", [0.003, 0.001, 0.002]))
    assert summary == {"p50_ms": 2.0, "p99_ms": 3.0, "p999_ms": 3.0, "max_ms": 3.0}

