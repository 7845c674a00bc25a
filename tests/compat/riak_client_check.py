"""Basho's Python client (riak 2.7.0, 2016) over its HTTP transport against a dynd node's HTTP door.

Not part of the suite: the client predates Python 3.10 and needs shims, so it runs from a venv of
its own (nothing of it enters dynd's):

    python3 -m venv /tmp/riakvenv && /tmp/riakvenv/bin/pip install riak==2.7.0
    cat > /tmp/riakvenv/lib/python3.*/site-packages/sitecustomize.py <<'PY'
    import collections, collections.abc
    for name in collections.abc.__all__:
        if not hasattr(collections, name):
            setattr(collections, name, getattr(collections.abc, name))
    _namedtuple = collections.namedtuple
    collections.namedtuple = lambda *args, verbose=False, **kwargs: _namedtuple(*args, **kwargs)
    PY
    dynd --name r1 --data-dir /tmp/r1 --http-listen 127.0.0.1:8098 --replicas 1 --r 1 --w 1 &
    /tmp/riakvenv/bin/python tests/compat/riak_client_check.py 127.0.0.1:8098

Run it on an empty node: blind writes of an earlier run would leave siblings. Prints one line per
check and how many pass.
"""
from __future__ import annotations

import sys
from collections.abc import Callable

import riak  # type: ignore[import-not-found]

host, port = sys.argv[1].rsplit(":", 1)
client = riak.RiakClient(protocol="http", host=host, http_port=int(port))
bucket = client.bucket("riakpy")


def text(key: str | None, data: str) -> object:
    obj = bucket.new(key, data=data, content_type="text/plain")
    obj.store()
    return obj


def ping() -> None:
    assert client.ping() is True


def store_and_fetch_json() -> None:
    bucket.new("k1", data={"a": 1}).store()
    got = bucket.get("k1")
    assert got.exists and got.data == {"a": 1} and got.content_type == "application/json", (got.data, got.content_type)


def binary_value() -> None:
    bucket.new("bin", encoded_data=b"\x00\x01raw", content_type="application/octet-stream").store()
    assert bucket.get("bin").encoded_data == b"\x00\x01raw"


def user_metadata() -> None:
    obj = bucket.new("m1", data="x", content_type="text/plain")
    obj.usermeta = {"color": "red"}
    obj.store()
    assert bucket.get("m1").usermeta == {"color": "red"}


def siblings_and_resolve() -> None:
    text("s1", "one")
    text("s1", "two")  # no vclock: a sibling
    got = bucket.get("s1")
    assert sorted(s.data for s in got.siblings) == ["one", "two"], got.siblings
    got.siblings = [got.siblings[0]]
    got.data = "merged"
    got.store()
    again = bucket.get("s1")
    assert len(again.siblings) == 1 and again.data == "merged", again.siblings


def delete() -> None:
    text("d1", "x")
    bucket.get("d1").delete()
    assert not bucket.get("d1").exists


def missing_key() -> None:
    assert not bucket.get("never-written").exists


def list_keys() -> None:
    keys = bucket.get_keys()
    assert "k1" in keys and "d1" not in keys, keys


def stream_keys() -> None:
    assert "k1" in [key for batch in bucket.stream_keys() for key in batch]


def bucket_props() -> None:
    props = bucket.get_properties()
    assert props["n_val"] >= 1 and props["allow_mult"] is True, props


def quorums() -> None:
    bucket.new("q1", data="x", content_type="text/plain").store(w="all", pw=1, dw=1)
    assert bucket.get("q1", r="all", pr=1).data == "x"


def returnbody() -> None:
    obj = bucket.new("rb", data="x", content_type="text/plain")
    obj.store(return_body=True)
    assert obj.vclock is not None


def stats() -> None:
    numbers = client._with_retries(client._http_pool, lambda transport: transport.stats())
    assert "node_gets" in numbers and numbers["riak_kv_version"], list(numbers)[:5]


def list_buckets() -> None:
    assert "riakpy" in [b.name for b in client.get_buckets()]


def store_without_a_key() -> None:
    obj = text(None, "anon")
    assert obj.key and bucket.get(obj.key).data == "anon"  # type: ignore[attr-defined]


CHECKS: list[Callable[[], None]] = [
    ping, store_and_fetch_json, binary_value, user_metadata, siblings_and_resolve, delete, missing_key,
    list_keys, stream_keys, bucket_props, quorums, returnbody, stats, list_buckets, store_without_a_key,
]  # fmt: skip
passed = 0
for check in CHECKS:
    try:
        check()
    except Exception as exc:  # a report of what fails, check by check
        print(f"FAIL {check.__name__}: {type(exc).__name__}: {exc}"[:300])
    else:
        passed += 1
        print(f"pass {check.__name__}")
print(f"{passed}/{len(CHECKS)} pass")
