"""Every size, count and time limit of a node, in one frozen object that checks how they relate.

The config file's [limits] table sets these by name (see deploy/dynd.toml); the defaults are safe
for a commodity server. Units are part of each name.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

# LMDB's compiled-in key limit is 511 bytes; object keys carry a 2-byte partition prefix.
LMDB_KEY_BYTES_MAX = 511
PARTITION_PREFIX_BYTES = 2
BACKUP_CHUNK_BYTES_MAX = 16 * 1024 * 1024
AE_ROOT_BYTES_MAX = 32  # one partition and its root in a TreeRootsCompare (9 + 17 bytes of CBOR at most)


_ZERO_MEANS_OFF = frozenset({"slow_request_ms", "digest_read_min_bytes"})  # 0 allowed: off, or (digests) always


@dataclass(frozen=True, slots=True)
class Limits:
    # wire
    frame_bytes_max: int = 4 * 1024 * 1024
    frame_timeout_ms: int = 10_000
    handshake_timeout_ms: int = 3_000  # a new connection must finish its hello within this
    handshake_frame_bytes_max: int = 64 * 1024  # frames before the hello is done (a hello is tiny)
    idle_timeout_ms: int = 600_000  # connections that proved a credential (token, secret) or are local
    idle_timeout_anonymous_ms: int = 60_000  # remote connections with no credential
    partial_frames_bytes_max: int = 64 * 1024 * 1024  # partly received frames, all connections together
    connections_max: int = 1024
    connection_inflight_max: int = 512
    connection_outbuf_bytes_max: int = 16 * 1024 * 1024
    # data
    key_bytes_max: int = 256
    value_bytes_max: int = 1024 * 1024
    object_bytes_warn: int = 2 * 1024 * 1024
    object_bytes_max: int = 3 * 1024 * 1024
    siblings_warn: int = 25
    siblings_max: int = 100
    context_entries_max: int = 256
    context_prune_threshold: int = 10
    actor_bytes_max: int = 128
    # An object's `seen` holds one entry per actor epoch that ever wrote the key and is never
    # pruned (dynd.core.versions): records from peers with more are refused. Epochs change on
    # unclean restarts, failed commits and handoff or reaping batches, so a key written for years
    # holds thousands; this leaves room for that, bounds the work of one merge to some tens of
    # milliseconds, and is about what a record of ordinary actor names can carry in one frame.
    seen_entries_max: int = 65_536
    meta_bytes_max: int = 8_192  # one sibling's metadata: its content type and user metadata, names and values
    versions_cache_entries: int = 4_096  # objects written and contexts handed out kept decoded
    versions_cache_record_bytes_max: int = 16_384  # larger objects are decoded afresh each write
    # storage
    pending_writes_max: int = 20_000
    object_cache_bytes_max: int = 64 * 1024 * 1024  # recently committed or read objects, kept in memory
    lmdb_map_bytes: int = 16 * 1024**3
    # requests and background work
    request_timeout_ms: int = 5_000
    join_timeout_ms: int = 60_000  # a first start with `join` waits this long for the seed, then fails
    tick_interval_ms: int = 50
    peer_retry_ms: int = 1_000
    gossip_interval_ms: int = 1_000
    # membership (dynd.core.membership): what one membership may hold (a peer's or the disk's
    # with more is refused), and compaction: the compactor folds settled events into a snapshot
    # once this many are past it; a member it has not exchanged gossip with for
    # membership_settle_ms counts as down (its own events below a snapshot are recorded again)
    membership_events_max: int = 100_000
    membership_members_max: int = 10_000
    membership_compact_events: int = 16
    membership_settle_ms: int = 600_000
    handoff_interval_ms: int = 2_000
    handoff_batch_keys: int = 128
    # membership plans and transfer listings: how long a node waits for the members' answers
    # (a dead member does not hold the operator back longer), and how many keys of each
    # partition it reads to estimate the partition's bytes
    gather_timeout_ms: int = 2_000
    plan_sample_keys: int = 16
    # anti-entropy (Merkle trees; segments and fanout must match across the cluster)
    ae_interval_ms: int = 10_000
    ae_indexes_max: int = 1_024
    ae_batch_keys: int = 512
    ae_repairs_inflight: int = 8
    ae_concurrency: int = 1
    ae_peers_per_round: int = 2  # peers a round compares roots with, one request each
    ae_roots_max: int = 1_024  # partitions (and their roots) in one such request
    ae_tree_segments: int = 256
    ae_tree_fanout: int = 16
    # admission control: background work backs off while foreground p99 is above this
    background_p99_target_ms: int = 30
    # observability: a coordinated request slower than this is logged (0: never); the slow-request
    # and quorum-failure logs write at most this many lines a second, then count what they drop
    slow_request_ms: int = 1_000
    slow_log_lines_per_s: int = 10
    # digest reads: a get asks the other replicas to answer "same" instead of their record only
    # when its own copy is at least this big (measured on loopback: a win at 16 KiB values, even to
    # slightly worse at 1 KiB, where the bytes saved cost less than the comparison); 0: always
    digest_read_min_bytes: int = 4096
    # tombstone reaping: a tombstone goes once every primary holds it and this long has passed
    tombstone_grace_ms: int = 864_000_000  # 10 days: a node down longer must be wiped to rejoin
    reap_interval_ms: int = 10_000
    reap_batch_keys: int = 64
    # hinted handoff
    hint_delivery_interval_ms: int = 1_000
    hint_batch_keys: int = 64
    hints_max: int = 1_000_000
    # backups (`dynctl backup`, dynd.shell.backup): a consistent copy of the store streamed to an
    # admin in chunks; an abandoned one (no read for the idle timeout) is stopped and deleted
    backups_max: int = 1  # copies in progress at once (each holds an LMDB reader and disk space)
    backup_chunk_bytes: int = 1024 * 1024  # the most one read returns
    backup_idle_timeout_ms: int = 60_000
    backup_read_wait_ms: int = 1_000  # a read at the end of what is copied so far waits this long for more
    backup_reads_inflight_max: int = 8  # reads of one backup at once: each holds a chunk in memory
    # the HTTP door (`http_listen`, dynd.shell.http_server): Riak's HTTP KV interface
    http_header_bytes_max: int = 16_384  # a request's line and headers together
    http_body_bytes_max: int = 1024 * 1024 + 64 * 1024  # a request body (a value, or multipart siblings)
    http_connections_max: int = 256  # more are answered 503 and closed
    http_idle_timeout_ms: int = 60_000  # a kept-alive connection with no request
    http_request_timeout_ms: int = 10_000  # a request must arrive whole within this of its first byte
    # key listing (`?keys=true|stream`): a full scan of every node's store, bounded
    list_keys_max: int = 100_000  # keys one listing returns at most (then it says it was cut short)
    list_keys_scan_max: int = 1_000_000  # stored keys one node examines for one listing
    list_keys_inflight_max: int = 1  # listings this node coordinates at once; more are refused (overloaded)
    # failure detection (SWIM over UDP)
    swim_period_ms: int = 1_000
    swim_ping_timeout_ms: int = 400
    swim_indirect_probes: int = 3
    swim_suspicion_timeout_ms: int = 4_000
    swim_retransmit_mult: int = 3
    swim_piggyback_max: int = 8
    datagram_bytes_max: int = 1_400
    # many nodes per host (`dynd --workers K`, dynd.shell.supervisor): the most workers one host
    # may run; a worker that dies is restarted after a backoff that doubles from the first to the
    # max with each death in the window; more than worker_restarts_max deaths of one worker in the
    # window and the supervisor stops the host (exit 1, for systemd to restart it); on stop, a worker
    # still running after worker_stop_timeout_ms is killed (keep it below the unit's TimeoutStopSec)
    workers_max: int = 256
    worker_restart_backoff_ms: int = 1_000
    worker_restart_backoff_max_ms: int = 30_000
    worker_restarts_max: int = 5
    worker_restart_window_ms: int = 300_000
    worker_stop_timeout_ms: int = 20_000

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if type(value) is not int or value < 0 or (value == 0 and f.name not in _ZERO_MEANS_OFF):
                raise ValueError(f"limit {f.name} must be a positive integer, got {value!r}")
        if self.key_bytes_max > LMDB_KEY_BYTES_MAX - PARTITION_PREFIX_BYTES:
            raise ValueError(f"key_bytes_max must be at most {LMDB_KEY_BYTES_MAX - PARTITION_PREFIX_BYTES} (LMDB's key limit)")
        if self.value_bytes_max > self.object_bytes_max:
            raise ValueError("value_bytes_max must not exceed object_bytes_max")
        if self.object_bytes_warn > self.object_bytes_max:
            raise ValueError("object_bytes_warn must not exceed object_bytes_max")
        if self.siblings_warn > self.siblings_max:
            raise ValueError("siblings_warn must not exceed siblings_max")
        # A read context keeps every sibling's dot, and the vector entry of its actor: up to two
        # entries per sibling when a dot cannot fold into the vector (a gap before it), beside the
        # pruning threshold. The client must be able to send it back, or the key cannot be resolved.
        if self.context_entries_max < 2 * self.siblings_max + self.context_prune_threshold:
            raise ValueError("context_entries_max must be at least 2 * siblings_max + context_prune_threshold")
        if self.seen_entries_max < self.context_entries_max:
            raise ValueError("seen_entries_max must be at least context_entries_max (a write's context joins seen)")
        # a put frame carries a key, a value and a context; a get reply carries a whole object
        put_frame_bytes = self.key_bytes_max + self.value_bytes_max + self.context_entries_max * (self.actor_bytes_max + 32) + 1024
        if self.frame_bytes_max < put_frame_bytes:
            raise ValueError(f"frame_bytes_max must be at least {put_frame_bytes} to carry the largest put")
        # a probe must leave room in its period for the indirect probes; a datagram must hold a ping
        if not self.tick_interval_ms < self.swim_ping_timeout_ms < self.swim_period_ms:
            raise ValueError("need tick_interval_ms < swim_ping_timeout_ms < swim_period_ms")
        if self.partial_frames_bytes_max < self.frame_bytes_max:
            raise ValueError("partial_frames_bytes_max must be at least frame_bytes_max (one whole frame must fit)")
        if self.handshake_frame_bytes_max > self.frame_bytes_max:
            raise ValueError("handshake_frame_bytes_max must not exceed frame_bytes_max")
        # a backup chunk travels as one reply frame (clients take replies of up to 64 MiB); a reader
        # waiting for more must not look idle
        if self.backup_chunk_bytes > BACKUP_CHUNK_BYTES_MAX:
            raise ValueError(f"backup_chunk_bytes must be at most {BACKUP_CHUNK_BYTES_MAX}")
        if self.backup_chunk_bytes > self.connection_outbuf_bytes_max:
            raise ValueError("backup_chunk_bytes must not exceed connection_outbuf_bytes_max")
        if self.backup_read_wait_ms >= self.backup_idle_timeout_ms:
            raise ValueError("backup_read_wait_ms must be below backup_idle_timeout_ms")
        if self.worker_restart_backoff_ms > self.worker_restart_backoff_max_ms:
            raise ValueError("worker_restart_backoff_ms must not exceed worker_restart_backoff_max_ms")
        if self.workers_max > 65_535:
            raise ValueError("workers_max must be at most 65535 (each worker takes a port)")
        if self.ae_roots_max * AE_ROOT_BYTES_MAX > self.frame_bytes_max:
            raise ValueError(f"ae_roots_max must be at most frame_bytes_max / {AE_ROOT_BYTES_MAX} (the roots must fit in one frame)")
        if self.meta_bytes_max >= self.http_header_bytes_max:
            raise ValueError("meta_bytes_max must be below http_header_bytes_max (metadata travels in headers)")
        if self.list_keys_max > self.list_keys_scan_max:
            raise ValueError("list_keys_max must not exceed list_keys_scan_max")
        if self.membership_compact_events > self.membership_events_max:
            raise ValueError("membership_compact_events must not exceed membership_events_max")
        if self.membership_settle_ms < 2 * self.gossip_interval_ms:
            raise ValueError("membership_settle_ms must be at least 2 * gossip_interval_ms (members are heard by gossip)")
        if not 512 <= self.datagram_bytes_max <= 65_507:
            raise ValueError("datagram_bytes_max must be 512..65507 (the largest UDP payload)")
