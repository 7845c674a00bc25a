"""Riak's HTTP KV interface, translated into the node's own requests.

Every data request becomes the protocol message the CBOR port would carry (Get, Put, Delete,
KeysList, StatsGet) and goes through `Node.handle`, as a request from a connection holding the
HTTP request's roles: quorums, versions, siblings, forwarding, metrics and admission control are
the node's, exactly as for a CBOR client. Nothing here reads or writes the store.

How Riak's resources map onto dynd (README, HTTP; man dynd(8)):
- `/buckets/B/keys/K` (and `/types/default/buckets/B/keys/K`) is the stored key
  `dynd.protocol.buckets.bucket_key(B, K)`; other bucket types do not exist (404).
- `X-Riak-Vclock` is dynd's context token, base64. A PUT without one is a blind write: it keeps
  what is there as siblings. A GET of several siblings answers `300 Multiple Choices` with their
  vtags (or every sibling as `multipart/mixed` when the client accepts it); `?vtag=V` picks one.
  A missing key is 404; a deleted one is 404 with `X-Riak-Deleted: true` and the tombstone's vclock.
- `r`, `w`, `pr`, `pw` are dynd's own per-request quorums (pr: that many of the R replies from
  primaries, pw: that many of the W stores on primaries). `dw`: every store dynd counts toward W is
  durable (fsync) before it is acknowledged, so dw raises W to at least dw. `rw` (a DELETE's): both.
- PUT needs a Content-Type (400 without, as Riak); it is stored with the value, with any
  `X-Riak-Meta-*` headers (within meta_bytes_max), and served back; Last-Modified is the
  sibling's write time; the ETag is its quoted vtag. `returnbody=true` answers as a GET made
  right after the write (it may show a concurrent writer's sibling too).
- A DELETE without a vclock reads the key first (r) and deletes what it read; 404 when there is
  nothing to delete.
- Conditional requests: GET with If-None-Match (the ETag) answers 304; PUT with If-None-Match: *
  (create only) or If-Match: ETAG reads first and answers 412 when the condition fails. The read
  and the write are two requests: a concurrent writer can still slip between them, as in Riak.
- `GET /buckets/B/keys?keys=true|stream`: a KeysList over the bucket's prefix (a bounded full scan
  of every node, `dynd.core.listing`); an answer that may miss keys says `"complete": false` (and
  the header X-Dynd-Keys-Complete: false). `GET /buckets?buckets=true` lists the buckets found the
  same way.
- `GET /stats` is the node's StatsOk (an admin request: with a cluster secret, from the node's own
  host or with an admin token) in Riak's field names, with dynd's own beside them. A client
  without the admin role gets only the node's name and `riak_kv_version` (the Riak release whose
  interface this follows), which Riak's client libraries read before anything else.
"""

from __future__ import annotations

import itertools
import json
import secrets
from collections.abc import Callable
from typing import Any

import trio

from dynd.core.node import Node
from dynd.core.versions import EMPTY_CLOCK
from dynd.core.versions_codec import encode_context
from dynd.protocol import auth, codec, messages
from dynd.protocol.buckets import BUCKET_MARK, bucket_key, bucket_prefix, split_key
from dynd.protocol.errors import BadRequest
from dynd.protocol.messages import ErrorReply, SiblingView, required_role
from dynd.shell.http_server import HttpRequest, HttpResponse
from dynd.shell.riak_wire import (
    DEFAULT_TYPE,
    ERROR_STATUS,
    KEYS_PER_CHUNK,
    BadParameter,
    Route,
    accepts_multipart,
    decode_vclock,
    encode_vclock,
    etag_matches,
    flag,
    key_text,
    keys_json,
    location,
    multipart,
    quorum,
    route,
    sibling_headers,
    split_target,
    user_meta,
    vtag_of,
)

TEXT = ("Content-Type", "text/plain")
JSON = ("Content-Type", "application/json")
# The Riak release whose HTTP interface this one follows, as /stats names it: Riak's clients read
# it to decide which resources and parameters the server knows (bucket types: 2.0 on).
RIAK_API_VERSION = "2.2.0"
KEY_BYTES_GENERATED = 16  # a POST without a key gets a random one: 22 characters of base62-like text
# The node answers every request within request_timeout_ms (its coordinations have deadlines);
# this is only a guard against a bug leaving an HTTP request waiting forever.
ANSWER_GUARD_FACTOR = 3


class RiakApi:
    """The `App` of `dynd.shell.http_server.HttpServer` for one node."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self._ids = itertools.count(1)
        self.requests: dict[str, int] = {}  # by "METHOD status class", for /stats
        self._routes: dict[str, Callable[[HttpRequest, Route, dict[str, list[str]]], Any]] = {
            "root": self._root,
            "ping": self._ping,
            "stats": self._stats,
            "buckets": self._buckets,
            "props": self._props,
            "keys": self._keys,
            "object": self._object,
        }

    async def __call__(self, request: HttpRequest) -> HttpResponse:
        try:
            path, params = split_target(request.target)
            where = route(path)
            if where is None:
                response = _text(404, "no such resource (see GET / for what is served)")
            elif where.bucket_type != DEFAULT_TYPE:
                response = _text(404, f"Unknown bucket type: {where.bucket_type.decode('latin-1')}")
            elif request.token_refused:
                response = HttpResponse(401, [TEXT, ("WWW-Authenticate", 'Bearer realm="dynd"')], b"the bearer token is not valid here\n")
            else:
                response = await self._routes[where.kind](request, where, params)
        except BadParameter as exc:
            response = _text(400, str(exc))
        except BadRequest as exc:
            response = _text(400, exc.message)
        if response.status == 403 and request.header(b"authorization") is None:
            response.status = 401  # no credential given: say which kind would do
            response.headers.append(("WWW-Authenticate", 'Bearer realm="dynd"'))
        bucket = f"{request.method} {response.status // 100}xx"
        self.requests[bucket] = self.requests.get(bucket, 0) + 1
        return response

    # ---- the node ----

    async def _call(self, request: HttpRequest, message: Any) -> Any:
        """Serve `message` as the node serves it for a CBOR connection holding `request.roles`;
        the answer (an ErrorReply on failure), decoded."""
        role = required_role(message)
        if role is not None and role not in request.roles:
            return ErrorReply(id=message.id, code="unauthorized", message=_refusal(role, request), retriable=False)
        answers: list[Any] = []
        answered = trio.Event()

        def reply(answer: Any) -> None:
            answers.append(answer)
            answered.set()

        self.node.handle(message, reply)
        with trio.move_on_after(ANSWER_GUARD_FACTOR * self.node.limits.request_timeout_ms / 1000):
            await answered.wait()
        if not answers:
            return ErrorReply(id=message.id, code="timeout", message="the node did not answer in time", retriable=True)
        answer = answers[0]
        return codec.decode_message(answer) if isinstance(answer, bytes) else answer

    @property
    def _n(self) -> int:
        return self.node.cluster.params.n

    # ---- small resources ----

    async def _root(self, request: HttpRequest, where: Route, params: dict[str, list[str]]) -> HttpResponse:
        resources = {
            "riak_kv_wm_buckets": "/buckets",
            "riak_kv_wm_object": "/buckets",
            "riak_kv_wm_keylist": "/buckets",
            "riak_kv_wm_props": "/buckets",
            "riak_kv_wm_ping": "/ping",
            "riak_kv_wm_stats": "/stats",
        }
        return HttpResponse(200, [JSON], json.dumps(resources).encode())

    async def _ping(self, request: HttpRequest, where: Route, params: dict[str, list[str]]) -> HttpResponse:
        if request.method not in ("GET", "HEAD"):
            return _not_allowed("GET, HEAD")
        answer = await self._call(request, messages.Ping(id=next(self._ids)))
        if isinstance(answer, ErrorReply):
            return _error(answer)
        return HttpResponse(200, [("Content-Type", "text/html")], b"OK")

    async def _stats(self, request: HttpRequest, where: Route, params: dict[str, list[str]]) -> HttpResponse:
        if request.method not in ("GET", "HEAD"):
            return _not_allowed("GET, HEAD")
        if auth.ADMIN not in request.roles and auth.CLIENT in request.roles:
            # Riak's clients read the server's version here before anything else: a client may
            # learn that much, and the node's name (which a ping tells it too), not the numbers.
            brief = {"nodename": self.node.name, "riak_kv_version": RIAK_API_VERSION}
            return HttpResponse(200, [JSON], json.dumps(brief).encode())
        answer = await self._call(request, messages.StatsGet(id=next(self._ids)))
        if isinstance(answer, ErrorReply):
            return _error(answer)
        return HttpResponse(200, [JSON], json.dumps(self._riak_stats(answer)).encode())

    def _riak_stats(self, stats: messages.StatsOk) -> dict[str, Any]:
        """Riak's names for what dynd measures (times in microseconds, as Riak's), then dynd's own."""
        out: dict[str, Any] = {"nodename": stats.node, "riak_kv_version": RIAK_API_VERSION, "uptime_ms": stats.uptime_ms}
        latencies = {(view.op, view.window): view for view in stats.latencies}
        for op, riak in (("get", "get"), ("put", "put")):
            recent, start = latencies.get((op, "60s")), latencies.get((op, "start"))
            out[f"node_{riak}s"] = recent.count if recent else 0
            out[f"node_{riak}s_total"] = start.count if start else 0
            for suffix, field in (("median", "p50_us"), ("99", "p99_us"), ("999", "p999_us"), ("100", "max_us")):
                out[f"node_{riak}_fsm_time_{suffix}"] = getattr(recent, field) if recent else 0
        counted = {(metric.name, metric.label): metric.value for metric in stats.counters}
        out["read_repairs_total"] = counted.get(("read_repairs", ""), 0)
        out["http_requests"] = dict(sorted(self.requests.items()))
        out["dynd"] = codec.to_plain(stats)
        return out

    async def _props(self, request: HttpRequest, where: Route, params: dict[str, list[str]]) -> HttpResponse:
        if request.method not in ("GET", "HEAD"):
            return _not_allowed("GET, HEAD", "bucket properties are the cluster's (N, R, W are set when it is created)")
        cluster = self.node.cluster.params
        props = {
            "name": where.bucket.decode("utf-8", "replace"),
            "n_val": cluster.n,
            "r": cluster.r,
            "w": cluster.w,
            "dw": cluster.w,
            "rw": cluster.w,
            "pr": 0,
            "pw": 0,
            "allow_mult": True,
            "last_write_wins": False,
            "basic_quorum": False,
            "notfound_ok": True,
        }
        return HttpResponse(200, [JSON], json.dumps({"props": props}).encode())

    # ---- listings ----

    async def _list(self, request: HttpRequest, prefix: bytes) -> messages.KeysListOk | ErrorReply:
        return await self._call(request, messages.KeysList(id=next(self._ids), prefix=prefix))  # type: ignore[no-any-return]

    async def _buckets(self, request: HttpRequest, where: Route, params: dict[str, list[str]]) -> HttpResponse:
        if request.method not in ("GET", "HEAD"):
            return _not_allowed("GET, HEAD")
        if params.get("buckets", [""])[-1] != "true":
            return _text(400, "list buckets with ?buckets=true")
        answer = await self._list(request, bytes((BUCKET_MARK,)))
        if isinstance(answer, ErrorReply):
            return _error(answer)
        names = sorted({pair[0] for key in answer.keys if (pair := split_key(key)) is not None})
        body = json.dumps({"buckets": [key_text(name) for name in names], "complete": answer.complete}).encode()
        return HttpResponse(200, [JSON, ("X-Dynd-Keys-Complete", _bool(answer.complete))], body)

    async def _keys(self, request: HttpRequest, where: Route, params: dict[str, list[str]]) -> HttpResponse:
        if request.method == "POST":
            return await self._store(request, where, params, generated=True)
        if request.method not in ("GET", "HEAD"):
            return _not_allowed("GET, HEAD, POST")
        mode = params.get("keys", [""])[-1]
        if mode not in ("true", "stream"):
            return _text(400, "list keys with ?keys=true or ?keys=stream")
        answer = await self._list(request, bucket_prefix(where.bucket))
        if isinstance(answer, ErrorReply):
            return _error(answer)
        prefix_bytes = len(bucket_prefix(where.bucket))
        names = [key_text(key[prefix_bytes:]) for key in answer.keys]
        headers = [JSON, ("X-Dynd-Keys-Complete", _bool(answer.complete))]
        if mode == "true":
            return HttpResponse(200, headers, keys_json(names, {"complete": answer.complete}))
        chunks = [keys_json(names[at : at + KEYS_PER_CHUNK]) for at in range(0, len(names), KEYS_PER_CHUNK)]
        return HttpResponse(200, headers, chunks=[*chunks, keys_json([], {"complete": answer.complete})])

    # ---- objects ----

    async def _object(self, request: HttpRequest, where: Route, params: dict[str, list[str]]) -> HttpResponse:
        method = request.method
        if method in ("GET", "HEAD"):
            return await self._fetch(request, where, params)
        if method in ("PUT", "POST"):
            return await self._store(request, where, params)
        if method == "DELETE":
            return await self._delete(request, where, params)
        return _not_allowed("GET, HEAD, PUT, POST, DELETE")

    async def _get(self, request: HttpRequest, key: bytes, params: dict[str, list[str]]) -> messages.GetOk | ErrorReply:
        n = self._n
        message = messages.Get(id=next(self._ids), key=key, r=quorum(params, "r", n), pr=quorum(params, "pr", n))
        return await self._call(request, message)  # type: ignore[no-any-return]

    async def _fetch(self, request: HttpRequest, where: Route, params: dict[str, list[str]]) -> HttpResponse:
        answer = await self._get(request, bucket_key(where.bucket, where.key), params)
        if isinstance(answer, ErrorReply):
            return _error(answer)
        vtag = params.get("vtag", [None])[-1]
        return self._object_answer(request, answer, vtag, ok_status=200)

    def _object_answer(self, request: HttpRequest, answer: messages.GetOk, vtag: str | None, ok_status: int) -> HttpResponse:
        vclock = ("X-Riak-Vclock", encode_vclock(answer.context))
        siblings = answer.siblings
        if not siblings:
            if _is_empty_context(answer.context):
                return _text(404, "not found")
            return HttpResponse(404, [TEXT, ("X-Riak-Deleted", "true"), vclock], b"not found\n")
        if vtag is not None:
            chosen = [view for view in siblings if vtag_of(view) == vtag]
            if not chosen:
                return _text(404, "not found")
            siblings = chosen
        if len(siblings) == 1:
            view = siblings[0]
            headers = [vclock, *sibling_headers(view)]
            if etag_matches(request.header(b"if-none-match"), f'"{vtag_of(view)}"'):
                return HttpResponse(304, headers)
            return HttpResponse(ok_status, headers, view.value)
        if accepts_multipart(request.header(b"accept")):
            boundary = secrets.token_hex(12)
            return HttpResponse(300, [vclock, ("Content-Type", f"multipart/mixed; boundary={boundary}")], multipart(siblings, boundary))
        body = "Siblings:\n" + "".join(f"{vtag_of(view)}\n" for view in siblings)
        return HttpResponse(300, [vclock, TEXT], body.encode())

    async def _store(self, request: HttpRequest, where: Route, params: dict[str, list[str]], generated: bool = False) -> HttpResponse:
        content_type = request.header(b"content-type")
        if content_type is None:
            return _text(400, "Missing Content-Type request header")
        n = self._n
        w, dw, pw = quorum(params, "w", n), quorum(params, "dw", n), quorum(params, "pw", n)
        returnbody = flag(params, "returnbody")
        key_name = secrets.token_urlsafe(KEY_BYTES_GENERATED).encode() if generated else where.key
        key = bucket_key(where.bucket, key_name)
        vclock_header = request.header(b"x-riak-vclock")
        context = decode_vclock(vclock_header) if vclock_header is not None else None
        failed = await self._precondition(request, key, params)
        if failed is not None:
            return failed
        message = messages.Put(
            id=next(self._ids),
            key=key,
            value=request.body,
            context=context,
            w=max(w or 0, dw or 0) or None,
            pw=pw,
            content_type=content_type.decode("latin-1").strip(),
            usermeta=[messages.MetaEntry(name, value) for name, value in user_meta(request.headers)] or None,
        )
        answer = await self._call(request, message)
        if isinstance(answer, ErrorReply):
            return _error(answer)
        created = [("Location", location(where.bucket, key_name))] if generated else []
        if returnbody:
            fetched = await self._get(request, key, {})
            if isinstance(fetched, ErrorReply):
                return _error(fetched)
            response = self._object_answer(request, fetched, None, ok_status=201 if generated else 200)
            response.headers += created
            return response
        return HttpResponse(201 if generated else 204, [("X-Riak-Vclock", encode_vclock(answer.context)), *created])

    async def _precondition(self, request: HttpRequest, key: bytes, params: dict[str, list[str]]) -> HttpResponse | None:
        """412 when an If-None-Match or If-Match condition of a PUT fails (read first, as Riak does)."""
        if_none, if_match = request.header(b"if-none-match"), request.header(b"if-match")
        if if_none is None and if_match is None:
            return None
        current = await self._get(request, key, params)
        if isinstance(current, ErrorReply):
            return _error(current)
        etags = [f'"{vtag_of(view)}"' for view in current.siblings]
        if if_none is not None and (etags and (if_none.strip() == b"*" or any(etag_matches(if_none, tag) for tag in etags))):
            return _text(412, "precondition failed: the object exists (If-None-Match)")
        if if_match is not None and not (etags and (if_match.strip() == b"*" or any(etag_matches(if_match, tag) for tag in etags))):
            return _text(412, "precondition failed: no sibling has that ETag (If-Match)")
        return None

    async def _delete(self, request: HttpRequest, where: Route, params: dict[str, list[str]]) -> HttpResponse:
        n = self._n
        rw = quorum(params, "rw", n)
        w, pw = quorum(params, "w", n) or rw, quorum(params, "pw", n)
        key = bucket_key(where.bucket, where.key)
        vclock_header = request.header(b"x-riak-vclock")
        if vclock_header is not None:
            context = decode_vclock(vclock_header)
        else:
            read_params = dict(params)
            if "r" not in read_params and rw is not None:
                read_params["r"] = [str(rw)]
            current = await self._get(request, key, read_params)
            if isinstance(current, ErrorReply):
                return _error(current)
            if not current.siblings:
                return _text(404, "not found")
            context = current.context
        answer = await self._call(request, messages.Delete(id=next(self._ids), key=key, context=context, w=w, pw=pw))
        if isinstance(answer, ErrorReply):
            return _error(answer)
        return HttpResponse(204, [("X-Riak-Vclock", encode_vclock(answer.context))])


_EMPTY_CONTEXT = encode_context(EMPTY_CLOCK)  # a get's context when nothing, not even a tombstone, is there


def _is_empty_context(context: bytes) -> bool:
    return context == _EMPTY_CONTEXT


def _bool(value: bool) -> str:
    return "true" if value else "false"


def _text(status: int, message: str, extra: list[tuple[str, str]] | None = None) -> HttpResponse:
    return HttpResponse(status, [TEXT, *(extra or [])], (message + "\n").encode())


def _not_allowed(allow: str, why: str = "") -> HttpResponse:
    return _text(405, why or "method not allowed here", [("Allow", allow)])


def _error(answer: ErrorReply) -> HttpResponse:
    """A node's error in Riak's shape: its status, and a body that says what went wrong."""
    status = ERROR_STATUS.get(answer.code, 500)
    extra = [("Retry-After", "1")] if status == 503 and answer.retriable else []
    return _text(status, f"{answer.code}: {answer.message}", extra)


def _refusal(role: str, request: HttpRequest) -> str:
    if role == auth.ADMIN:
        return "this needs an admin token (Authorization: Bearer TOKEN) or a request from the node's own host"
    return "this node requires a client token: send Authorization: Bearer TOKEN"
