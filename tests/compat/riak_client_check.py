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
import sys, traceback
import riak
host, port = sys.argv[1].split(":")
client = riak.RiakClient(protocol="http", host=host, http_port=int(port))
results = []
def check(name, fn):
    try:
        fn(); results.append((name, "pass", ""))
    except Exception as exc:
        results.append((name, "FAIL", f"{type(exc).__name__}: {exc}"[:300]))

bucket = client.bucket("riakpy")
def ping(): assert client.ping() is True
def store_fetch():
    obj = bucket.new("k1", data={"a": 1}); obj.store()
    got = bucket.get("k1"); assert got.exists and got.data == {"a": 1}, got.data
    assert got.content_type == "application/json", got.content_type
def binary():
    bucket.new_from_file if False else None
    obj = bucket.new("bin", encoded_data=b"\x00\x01raw", content_type="application/octet-stream"); obj.store()
    assert bucket.get("bin").encoded_data == b"\x00\x01raw"
def usermeta():
    obj = bucket.new("m1", data="x", content_type="text/plain"); obj.usermeta = {"color": "red"}; obj.store()
    got = bucket.get("m1"); assert got.usermeta == {"color": "red"}, got.usermeta
def siblings_and_resolve():
    a = bucket.new("s1", data="one", content_type="text/plain"); a.store()
    b = bucket.new("s1", data="two", content_type="text/plain"); b.store()  # no vclock: a sibling
    got = bucket.get("s1")
    assert len(got.siblings) == 2, len(got.siblings)
    assert sorted(s.data for s in got.siblings) == ["one", "two"]
    got.siblings = [got.siblings[0]]; got.data = "merged"; got.store()
    again = bucket.get("s1"); assert len(again.siblings) == 1 and again.data == "merged", again.siblings
def delete():
    obj = bucket.new("d1", data="x", content_type="text/plain"); obj.store()
    bucket.get("d1").delete(); assert not bucket.get("d1").exists
def missing(): assert not bucket.get("never-written").exists
def keys():
    ks = bucket.get_keys(); assert "k1" in ks and "d1" not in ks, ks
def stream_keys():
    ks = [k for batch in bucket.stream_keys() for k in batch]; assert "k1" in ks, ks
def props():
    p = bucket.get_properties(); assert p["n_val"] >= 1 and p["allow_mult"] is True, p
def quorum():
    obj = bucket.new("q1", data="x", content_type="text/plain"); obj.store(w="all", pw=1, dw=1)
    assert bucket.get("q1", r="all", pr=1).data == "x"
def returnbody():
    obj = bucket.new("rb", data="x", content_type="text/plain"); obj.store(return_body=True); assert obj.vclock is not None
def stats():
    s = client._with_retries(client._http_pool, lambda transport: transport.stats())
    assert "node_gets" in s and s["riak_kv_version"], list(s)[:5]
def list_buckets():
    assert "riakpy" in [b.name for b in client.get_buckets()]
def create_without_key():
    obj = bucket.new(None, data="anon", content_type="text/plain"); obj.store(); assert obj.key, obj.key
    assert bucket.get(obj.key).data == "anon"

for name, fn in [("ping", ping), ("store and fetch JSON", store_fetch), ("binary value", binary), ("user metadata", usermeta),
                 ("siblings and resolve", siblings_and_resolve), ("delete", delete), ("missing key", missing),
                 ("list keys", keys), ("stream keys", stream_keys), ("bucket props", props), ("r/w/pr/pw/dw", quorum),
                 ("returnbody", returnbody), ("stats", stats), ("list buckets", list_buckets), ("store without a key", create_without_key)]:
    check(name, fn)
for name, outcome, why in results:
    print(f"{outcome:4} {name} {why}")
print(f"{sum(o == 'pass' for _, o, _ in results)}/{len(results)} pass")
