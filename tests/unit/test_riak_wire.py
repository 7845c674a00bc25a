"""The pure formatting of the HTTP door (`dynd.shell.riak_wire`): routes, quorum parameters,
vtags, vclocks and multipart bodies."""

from __future__ import annotations

import email.parser
import email.policy

import pytest

from dynd.protocol.messages import MetaEntry, SiblingView
from dynd.shell.riak_wire import (
    BadParameter,
    Route,
    decode_vclock,
    encode_vclock,
    etag_matches,
    multipart,
    quorum,
    route,
    split_target,
    user_meta,
    vtag_of,
)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (b"/", Route("root")),
        (b"/ping", Route("ping")),
        (b"/stats", Route("stats")),
        (b"/buckets", Route("buckets")),
        (b"/buckets/b/props", Route("props", b"b")),
        (b"/buckets/b/keys", Route("keys", b"b")),
        (b"/buckets/b/keys/k", Route("object", b"b", b"k")),
        (b"/types/default/buckets/b/keys/k", Route("object", b"b", b"k")),
        (b"/types/maps/buckets/b/keys/k", Route("object", b"b", b"k", b"maps")),
        (b"/buckets/a%2Fb/keys/%00%FF", Route("object", b"a/b", b"\x00\xff")),
        (b"/buckets//keys/k", None),
        (b"/buckets/b/keys/", Route("keys", b"b")),
        (b"/riak/b/k", None),
        (b"/buckets/b/keys/k/extra", None),
    ],
)
def test_routes(path: bytes, expected: Route | None) -> None:
    assert route(path) == expected


def test_quorum_parameters() -> None:
    params = split_target(b"/x?r=one&w=quorum&pr=all&pw=default&dw=2")[1]
    assert [quorum(params, name, 5) for name in ("r", "w", "pr", "pw", "dw", "rw")] == [1, 3, 5, None, 2, None]
    for bad in (b"?r=0", b"?r=6", b"?r=two", b"?r=-1"):
        with pytest.raises(BadParameter):
            quorum(split_target(b"/x" + bad)[1], "r", 5)


def view(actor: str, counter: int, **extra: object) -> SiblingView:
    return SiblingView(value=b"v", actor=actor, counter=counter, clock=[], **extra)  # type: ignore[arg-type]


def test_a_vtag_names_one_dot_the_same_everywhere() -> None:
    tags = {vtag_of(view(actor, counter)) for actor in ("a", "b") for counter in range(50)}
    assert len(tags) == 100 and all(len(tag) == 22 and tag.isalnum() for tag in tags)
    assert vtag_of(view("a", 1)) == vtag_of(view("a", 1, content_type="text/plain"))


def test_vclocks() -> None:
    assert decode_vclock(encode_vclock(b"\x83\x01\x80\x80").encode()) == b"\x83\x01\x80\x80"
    for bad in (b"!!", b"", b"abc"):
        with pytest.raises(BadParameter):
            decode_vclock(bad)


def test_multipart_parts_carry_each_siblings_headers() -> None:
    siblings = [
        SiblingView(b"one", "a", 1, [], "text/plain", [MetaEntry("color", "red")], 1_700_000_000_000),
        SiblingView(b"\r\n--two\r\n", "b", 1, [], None, None, None),
    ]
    body = multipart(siblings, "BOUNDARY123")
    message = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(b"Content-Type: multipart/mixed; boundary=BOUNDARY123\r\n\r\n" + body)
    parts = message.get_payload()
    assert [part.get_payload(decode=True) for part in parts] == [b"one", b"\r\n--two\r\n"]
    assert parts[0]["X-Riak-Meta-Color"] == "red" and parts[0]["Last-Modified"].endswith("GMT")
    assert parts[1]["Content-Type"] == "application/octet-stream" and parts[1]["Last-Modified"] is None


def test_user_metadata_and_etags() -> None:
    assert user_meta([(b"x-riak-meta-color", b"red"), (b"content-type", b"t")]) == [("color", "red")]
    with pytest.raises(BadParameter):
        user_meta([(b"x-riak-meta-", b"v")])
    assert etag_matches(b'"a", "b"', '"b"') and etag_matches(b"*", '"x"') and not etag_matches(b'"a"', '"b"')
