"""Riak's HTTP KV interface against a real 3-node cluster: the README's curl walk-through, and the
same resources through a plain HTTP client (http.client): store, fetch, conflict, resolve with
the vclock, delete, multipart siblings, metadata round trips, quorums, listings, bad input, and
the same objects through the CBOR port and dynctl."""

from __future__ import annotations

import base64
import email.parser
import email.policy
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dynd.client import BlockingClient
from dynd.protocol.buckets import bucket_key
from dynd.protocol.errors import BadRequest
from tests.support.cluster import poll_until
from tests.support.http_door import Answer, HttpNode, http_cluster, request

REPO = Path(__file__).resolve().parents[2]
needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl (apt-get install curl)")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[HttpNode]]:
    with http_cluster(tmp_path_factory.mktemp("http"), "h") as nodes:
        yield nodes


def put(node: HttpNode, path: str, body: bytes, content_type: str = "text/plain", **headers: str) -> Answer:
    return request(node.http, "PUT", path, body, {"Content-Type": content_type, **headers})


# ---- the README walk-through, run as written ----


def readme_walkthrough() -> str:
    text = (REPO / "README.md").read_text()
    section = text.split("## HTTP: curl and Riak clients", 1)[1]
    match = re.search(r"```sh\n(.*?)```", section, re.S)
    assert match is not None, "the HTTP section of README.md has no sh block"
    return match.group(1)


@needs_curl
def test_the_readme_curl_walkthrough_runs_against_a_three_node_cluster(cluster: list[HttpNode]) -> None:
    script = readme_walkthrough()
    assert script.startswith("H=127.0.0.1:8098"), script.splitlines()[0]
    script = script.replace("H=127.0.0.1:8098", f"H={cluster[0].http}", 1)
    env = {**os.environ, "DYNCTL_NODE": cluster[1].node.address, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    out = result.stdout
    statuses = [int(code) for code in re.findall(r"^HTTP/1\.1 (\d{3})", out, re.M)]
    assert statuses == [204, 204, 300, 204, 204, 404], out
    assert "Siblings:" in out and out.count("Content-Type: text/plain") >= 2, out
    assert "\none book\n" in out and "\none pen\n" in out, "the multipart body holds both siblings"
    assert "one book, one pen\n" in out, out
    document = json.loads(out[out.index("{") : out.index("}\n", out.index('"siblings"')) + 1])
    assert [s["content_type"] for s in document["siblings"]] == ["text/plain"], document
    assert base64.b64decode(document["value"]) == b"one book, one pen"
    assert "X-Riak-Deleted: true" in out and out.rstrip().endswith("not found"), out


# ---- a plain HTTP client ----


def test_store_and_fetch_with_metadata(cluster: list[HttpNode]) -> None:
    stored = put(cluster[0], "/buckets/b1/keys/k1", b"hello", "text/x-greeting; charset=utf-8", **{"X-Riak-Meta-Color": "red", "X-Riak-Meta-Size": "L"})
    assert stored.status == 204 and stored.header("X-Riak-Vclock")
    for node in cluster:  # any node serves any key
        got = request(node.http, "GET", "/types/default/buckets/b1/keys/k1")
        assert got.status == 200 and got.body == b"hello"
        assert got.header("Content-Type") == "text/x-greeting; charset=utf-8"
        assert got.header("X-Riak-Meta-Color") == "red" and got.header("X-Riak-Meta-Size") == "L"
        assert re.fullmatch(r'"[0-9A-Za-z]{22}"', got.header("ETag") or ""), got.header("ETag")
        assert got.header("Last-Modified", ) and got.header("Last-Modified").endswith("GMT")  # type: ignore[union-attr]
    head = request(cluster[1].http, "HEAD", "/buckets/b1/keys/k1")
    assert head.status == 200 and head.body == b"" and head.header("Content-Length") == "5"


def test_a_conflict_is_a_300_and_the_vclock_resolves_it(cluster: list[HttpNode]) -> None:
    path = "/buckets/carts/keys/c1"
    assert put(cluster[0], path, b"book").status == 204
    assert put(cluster[1], path, b"pen", "application/x-pen").status == 204  # blind: a sibling
    choices = request(cluster[2].http, "GET", path)
    assert choices.status == 300
    vtags = choices.body.decode().split("\n")[1:-1]
    assert choices.body.startswith(b"Siblings:\n") and len(vtags) == 2
    picked = {request(cluster[0].http, "GET", f"{path}?vtag={vtag}").body for vtag in vtags}
    assert picked == {b"book", b"pen"}
    parts = multipart_parts(request(cluster[0].http, "GET", path, headers={"Accept": "multipart/mixed"}))
    assert sorted((part.get_content_type(), part.get_payload(decode=True)) for part in parts) == [
        ("application/x-pen", b"pen"),
        ("text/plain", b"book"),
    ]
    resolved = put(cluster[2], f"{path}?returnbody=true", b"book and pen", **{"X-Riak-Vclock": choices.header("X-Riak-Vclock") or ""})
    assert resolved.status == 200 and resolved.body == b"book and pen"
    assert request(cluster[1].http, "GET", path).body == b"book and pen"


def multipart_parts(answer: Answer) -> list[email.message.Message]:
    assert answer.status == 300, answer
    content_type = answer.header("Content-Type") or ""
    assert content_type.startswith("multipart/mixed; boundary="), content_type
    message = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + answer.body
    )
    return message.get_payload()  # type: ignore[return-value]


def test_delete_then_404_with_the_tombstone_vclock(cluster: list[HttpNode]) -> None:
    path = "/buckets/gone/keys/g1"
    assert request(cluster[0].http, "GET", path).status == 404  # never written: no vclock
    assert "X-Riak-Vclock" not in request(cluster[0].http, "GET", path).headers
    put(cluster[0], path, b"v")
    assert request(cluster[1].http, "DELETE", path).status == 204
    gone = request(cluster[2].http, "GET", path)
    assert gone.status == 404 and gone.header("X-Riak-Deleted") == "true" and gone.header("X-Riak-Vclock")
    assert request(cluster[2].http, "DELETE", path).status == 404  # nothing left to delete


def test_post_to_a_bucket_makes_a_key(cluster: list[HttpNode]) -> None:
    made = request(cluster[0].http, "POST", "/buckets/posts/keys", b"new", {"Content-Type": "text/plain"})
    assert made.status == 201
    where = made.header("Location") or ""
    assert where.startswith("/buckets/posts/keys/")
    assert request(cluster[1].http, "GET", where).body == b"new"


def test_quorum_parameters(cluster: list[HttpNode]) -> None:
    path = "/buckets/q/keys/k"
    assert put(cluster[0], f"{path}?w=all&pw=3&dw=2", b"v").status == 204
    assert request(cluster[1].http, "GET", f"{path}?r=3&pr=quorum").body == b"v"
    for bad in ("?w=4", "?r=0", "?r=many", "?pw=9"):
        answer = put(cluster[0], path + bad, b"v") if "w" in bad else request(cluster[0].http, "GET", path + bad)
        assert answer.status == 400, (bad, answer)
        assert answer.body.strip(), "an error says what went wrong"


def test_conditional_requests(cluster: list[HttpNode]) -> None:
    path = "/buckets/cond/keys/k"
    assert put(cluster[0], path, b"first", **{"If-None-Match": "*"}).status == 204
    assert put(cluster[0], path, b"second", **{"If-None-Match": "*"}).status == 412
    etag = request(cluster[0].http, "GET", path).header("ETag") or ""
    assert request(cluster[0].http, "GET", path, headers={"If-None-Match": etag}).status == 304
    assert put(cluster[0], path, b"x", **{"If-Match": '"notthetag000000000000"'}).status == 412
    assert request(cluster[0].http, "GET", path).body == b"first"


def test_bad_input_gets_a_clear_4xx_and_changes_nothing(cluster: list[HttpNode]) -> None:
    path = "/buckets/bad/keys/k"
    put(cluster[0], path, b"kept")
    missing_type = request(cluster[0].http, "PUT", path, b"x", {})
    assert missing_type.status == 400 and b"Content-Type" in missing_type.body
    for vclock in ("!!!notbase64", base64.b64encode(b"\x83\x01garbage").decode(), ""):
        answer = put(cluster[0], path, b"x", **{"X-Riak-Vclock": vclock})
        assert answer.status == 400, (vclock, answer)
    too_long_key = "k" * 300
    assert put(cluster[0], f"/buckets/bad/keys/{too_long_key}", b"x").status == 400
    assert request(cluster[0].http, "GET", "/types/other/buckets/bad/keys/k").status == 404
    assert request(cluster[0].http, "GET", "/nothing/here").status == 404
    assert request(cluster[0].http, "PATCH", path).status == 405
    assert request(cluster[0].http, "GET", path).body == b"kept"


def test_small_resources(cluster: list[HttpNode]) -> None:
    assert request(cluster[0].http, "GET", "/ping").body == b"OK"
    stats = json.loads(request(cluster[0].http, "GET", "/stats").body)
    assert stats["node_gets_total"] >= 0 and "node_put_fsm_time_99" in stats and stats["dynd"]["node"] == "h1"
    props = json.loads(request(cluster[0].http, "GET", "/buckets/any/props").body)["props"]
    assert (props["n_val"], props["r"], props["w"], props["allow_mult"], props["last_write_wins"]) == (3, 2, 2, True, False)
    assert "riak_kv_wm_ping" in json.loads(request(cluster[0].http, "GET", "/").body)


def test_key_listing_is_complete_and_leaves_deleted_keys_out(cluster: list[HttpNode]) -> None:
    names = [f"key{i:02d}" for i in range(25)]
    for name in names:
        put(cluster[names.index(name) % 3], f"/buckets/listed/keys/{name}", b"v")
    put(cluster[0], "/buckets/listed-not/keys/other", b"v")  # a bucket whose name extends this one's
    request(cluster[0].http, "DELETE", "/buckets/listed/keys/key00")

    def listing() -> dict[str, object] | None:
        # A delete is acknowledged once W replicas hold the tombstone: until the last one does,
        # its scan still finds the value, and the key is listed (as in Riak).
        listed = json.loads(request(cluster[1].http, "GET", "/buckets/listed/keys?keys=true").body)
        return listed if "key00" not in listed["keys"] else None

    assert poll_until("the deleted key leaves the listing", listing) == {"keys": names[1:], "complete": True}
    streamed = request(cluster[2].http, "GET", "/buckets/listed/keys?keys=stream")
    chunks = [json.loads(part) for part in re.findall(rb"\{[^{}]*\}", streamed.body)]
    assert sorted(key for chunk in chunks for key in chunk["keys"]) == names[1:]
    buckets = json.loads(request(cluster[0].http, "GET", "/buckets?buckets=true").body)["buckets"]
    assert {"listed", "listed-not"} <= set(buckets)
    assert request(cluster[0].http, "GET", "/buckets/listed/keys?keys=maybe").status == 400


def test_keep_alive_and_pipelined_requests_answer_in_order(cluster: list[HttpNode]) -> None:
    for index in range(3):
        put(cluster[0], f"/buckets/pipe/keys/p{index}", f"value {index}".encode())
    host, port = cluster[0].http.rsplit(":", 1)
    pipelined = b"".join(f"GET /buckets/pipe/keys/p{index} HTTP/1.1\r\nHost: x\r\n\r\n".encode() for index in (2, 0, 1))
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(pipelined)
        received = b""
        while received.count(b"value ") < 3:
            chunk = sock.recv(65536)
            assert chunk, received
            received += chunk
    assert re.findall(rb"value \d", received) == [b"value 2", b"value 0", b"value 1"]


# ---- the same objects through the CBOR port and dynctl ----


def dynctl(node: HttpNode, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "dynctl", "--node", node.node.address, *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


def test_a_sibling_from_each_door_shows_its_content_type_through_the_other(cluster: list[HttpNode]) -> None:
    path = "/buckets/both/keys/doc"
    assert put(cluster[0], path, b"<p>hi</p>", "text/html", **{"X-Riak-Meta-Author": "web"}).status == 204
    written = dynctl(cluster[1], "put", "doc", '{"hi": 1}', "--bucket", "both", "--content-type", "application/json", "--meta", "author=cli")
    assert written.returncode == 0, written.stderr
    shown = dynctl(cluster[2], "--json", "get", "doc", "--bucket", "both")
    assert shown.returncode == 5, shown.stderr  # two siblings
    siblings = {s["content_type"]: s for s in json.loads(shown.stdout)["siblings"]}
    assert set(siblings) == {"text/html", "application/json"}
    assert siblings["text/html"]["meta"] == {"author": "web"} and base64.b64decode(siblings["text/html"]["value"]) == b"<p>hi</p>"
    assert siblings["application/json"]["meta"] == {"author": "cli"} and siblings["application/json"]["modified_ms"] > 0
    parts = multipart_parts(request(cluster[0].http, "GET", path, headers={"Accept": "multipart/mixed"}))
    by_type = {part.get_content_type(): part for part in parts}
    assert by_type["application/json"].get_payload(decode=True) == b'{"hi": 1}'
    assert by_type["application/json"]["X-Riak-Meta-Author"] == "cli" and by_type["text/html"]["X-Riak-Meta-Author"] == "web"


def test_cbor_clients_reach_bucket_objects_and_cannot_forge_bucket_keys(cluster: list[HttpNode]) -> None:
    with BlockingClient(cluster[0].node.address) as client:
        client.put(bucket_key(b"shared", b"k"), b"from cbor", content_type="text/plain", usermeta={"origin": "cbor"})
        got = request(cluster[1].http, "GET", "/buckets/shared/keys/k")
        assert (got.body, got.header("X-Riak-Meta-Origin")) == (b"from cbor", "cbor")
        for forged in (b"\x00", b"\x00\x05abc", b"\x00\x03abc", b"\x00\x00k"):  # start with the mark, no bucket key
            with pytest.raises(BadRequest, match="bucket key"):
                client.put(forged, b"x")
        plain = client.get(b"shared")  # a plain key never lands on a bucket object
        assert not plain.found
