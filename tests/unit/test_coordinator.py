"""Put and get coordination, driven synchronously: replies and ticks in, effects out."""

from __future__ import annotations

from dynd.core import coordinator as co
from dynd.core import versions
from dynd.core.limits import Limits
from dynd.core.quorum import Tally, Vote
from dynd.core.replica import LocalReplica, decode_record

LIMITS = Limits()


def record(*values: bytes, actor: str = "a") -> bytes:
    replica = LocalReplica(actor, LIMITS, 256)
    stored: bytes | None = None
    for value in values:
        stored = replica.write(b"k", value, None, stored, now_ms=1).record
    assert stored is not None
    return stored


def kinds(effects: list[co.Effect]) -> list[str]:
    return [type(e).__name__ for e in effects]


def test_tally_is_won_lost_or_pending() -> None:
    tally = Tally(2, 3)
    assert tally.record(True) is Vote.PENDING
    assert tally.record(False) is Vote.PENDING
    assert tally.record(True) is Vote.WON
    lost = Tally(2, 3)
    lost.record(False)
    assert lost.record(False) is Vote.LOST


def test_put_answers_after_w_stores_counting_its_own() -> None:
    put = co.PutCoordination(b"k", b"rec", (("b", None), ("c", None)), w=2, deadline_ms=100)
    effects = put.start()
    assert kinds(effects) == ["SendReplicate", "SendReplicate"], "sent at once, while our own store commits"
    assert put.on_local(True) == []
    assert put.on_reply("b", True) == [co.AnswerPut()]
    assert not put.finished, "c has not answered yet"
    assert put.on_reply("c", True) == []
    assert put.finished


def test_put_answers_on_two_replicas_before_its_own_commit_lands() -> None:
    put = co.PutCoordination(b"k", b"rec", (("b", None), ("c", None)), w=2, deadline_ms=100)
    put.start()
    assert put.on_reply("b", True) == []
    assert put.on_reply("c", True) == [co.AnswerPut()]
    assert not put.finished, "our own commit has not reported yet"
    assert put.on_local(True) == []
    assert put.finished


def test_a_failed_own_store_is_a_no_vote_and_named_in_the_failure() -> None:
    put = co.PutCoordination(b"k", b"rec", (("b", None), ("c", None)), w=3, deadline_ms=100)
    put.start()
    assert put.on_local(False, "the map is full") == [], "w=3 is lost; the answers of b and c are still due"
    assert put.on_reply("b", True) == []
    [failure] = put.on_reply("c", True)
    assert isinstance(failure, co.Fail) and "2 of 3 replicas stored the write, 1 failed" in failure.message
    assert "this node's own store failed: the map is full" in failure.message
    enough = co.PutCoordination(b"k", b"rec", (("b", None), ("c", None)), w=2, deadline_ms=100)
    enough.start()
    assert enough.on_local(False, "disk error") == []
    assert enough.on_reply("b", True) == []
    assert enough.on_reply("c", True) == [co.AnswerPut()], "two other replicas stored it: w=2 is met"


def test_with_hints_to_keep_the_answer_waits_for_the_own_store() -> None:
    put = co.PutCoordination(b"k", b"rec", (("b", None),), w=1, deadline_ms=100, replicas=3, local_required=True)
    put.start()
    assert put.on_reply("b", True) == [], "w=1 is met, but the hints for the down replicas are not stored yet"
    assert put.on_local(True) == [co.AnswerPut()]
    failing = co.PutCoordination(b"k", b"rec", (("b", None),), w=1, deadline_ms=100, replicas=3, local_required=True)
    failing.start()
    failing.on_reply("b", True)
    [failure] = failing.on_local(False, "disk error")
    assert isinstance(failure, co.Fail) and "hints" in failure.message


def test_put_fails_clearly_when_w_cannot_be_reached() -> None:
    put = co.PutCoordination(b"k", b"rec", (("b", None), ("c", None)), w=3, deadline_ms=100)
    put.start()
    put.on_local(True)
    keep_hint, *answer = put.on_reply("b", False)
    assert keep_hint == co.StoreHint("b", b"k", b"rec"), "no fallback left: the coordinator keeps b's hint"
    assert answer == [], "lost, but c's answer is still due: the count waits for it"
    [failure] = put.on_reply("c", True)
    assert isinstance(failure, co.Fail) and failure.code == "quorum"
    assert "w=3 cannot be met: 2 of 3 replicas stored the write (this node among them), 1 failed" in failure.message
    assert put.finished


def test_put_times_out_with_the_count() -> None:
    put = co.PutCoordination(b"k", b"rec", (("b", None), ("c", None)), w=3, deadline_ms=100)
    put.start()
    put.on_local(True)
    put.on_reply("b", True)
    assert put.on_tick(99) == []
    [failure] = put.on_tick(100)
    assert isinstance(failure, co.Fail) and failure.code == "timeout"
    assert "2 of 3 replicas stored the write (this node among them), 1 had not answered" in failure.message
    assert "not undone" in failure.message, "the stored copies stay: say so"


def test_a_put_that_loses_at_once_still_counts_the_stores_that_happen() -> None:
    """N=3, W=3, one replica down with no fallback (a paused node): W is lost before anyone
    answers, yet this node and the reachable replica store the write. The failure waits for our own
    store to report, so it does not claim that nothing was stored."""
    put = co.PutCoordination(b"k", b"rec", (("b", None),), w=3, deadline_ms=100, replicas=3, local_required=True)
    assert put.start() == [co.SendReplicate("b", b"k", b"rec", None)], "sent, and no answer before our own store reports"
    assert put.on_reply("b", True) == [], "still waiting for our own store"
    [failure] = put.on_local(True)
    assert isinstance(failure, co.Fail) and failure.code == "quorum"
    assert "w=3 cannot be met: 2 of 3 replicas stored the write (this node among them), 1 is down with no node to stand in" in failure.message
    assert "ordinary version" in failure.message and "may still reach the other replicas" in failure.message
    assert put.finished
    silent = co.PutCoordination(b"k", b"rec", (("b", None),), w=3, deadline_ms=100, replicas=3, local_required=True)
    silent.start()
    assert silent.on_local(True) == [], "b's answer is still due"
    [failure] = silent.on_tick(100)
    assert failure.code == "quorum", "lost before the deadline: a quorum failure, not a timeout"
    assert "1 of 3 replicas stored the write (this node among them), 1 is down with no node to stand in, 1 had not answered" in failure.message
    assert silent.on_reply("b", True) == [] and silent.finished


def test_a_put_lost_while_its_own_store_never_reports_fails_at_the_deadline() -> None:
    put = co.PutCoordination(b"k", b"rec", (), w=2, deadline_ms=100, replicas=3)
    assert put.start() == []
    [failure] = put.on_tick(100)
    assert failure.code == "quorum" and "(this node's own store among them)" in failure.message


def test_a_failure_says_whether_anything_was_stored_or_hinted() -> None:
    put = co.PutCoordination(b"k", b"rec", (("b", None),), w=2, deadline_ms=100, spares=())
    put.start()
    keep_hint, *answer = put.on_reply("b", False)
    assert isinstance(keep_hint, co.StoreHint) and answer == [], "lost, but our own store has not reported yet"
    [failure] = put.on_local(False, "disk error")
    assert isinstance(failure, co.Fail) and "0 of 2 replicas stored the write, 2 failed" in failure.message
    assert "this node keeps a hint for 1 that failed" in failure.message and "not undone" in failure.message
    nothing = co.PutCoordination(b"k", b"rec", (), w=2, deadline_ms=100, replicas=2)
    nothing.start()
    [failure] = nothing.on_local(False, "disk error")
    assert failure.message.endswith("Nothing was stored"), failure


def test_w_counts_among_the_replicas_that_exist() -> None:
    put = co.PutCoordination(b"k", b"rec", (), w=2, deadline_ms=100)
    assert put.start() == []
    assert put.on_local(True) == [co.AnswerPut()]


def test_get_answers_after_r_with_the_merge_and_repairs_the_stale() -> None:
    fresh = record(b"v1", b"v2")  # two siblings
    stale = record(b"v1")
    get = co.GetCoordination(b"k", stale, (("b", None), ("c", None)), r=2, deadline_ms=100, prune_threshold=10)
    assert kinds(get.start()) == ["SendFetch", "SendFetch"]
    [answer] = get.on_reply("b", fresh)
    assert isinstance(answer, co.AnswerGet) and answer.record is not None
    assert sorted(s.value for s in decode_record(answer.record).siblings) == [b"v1", b"v2"]
    repairs = get.on_reply("c", None)  # c has nothing: it and the coordinator get the merge
    assert {type(e).__name__ for e in repairs} == {"StoreLocal", "SendReplicate"}
    assert [e.node for e in repairs if isinstance(e, co.SendReplicate)] == ["c"]
    assert get.finished


def test_get_with_agreeing_replicas_repairs_nothing() -> None:
    same = record(b"v")
    get = co.GetCoordination(b"k", same, (("b", None),), r=1, deadline_ms=100, prune_threshold=10)
    effects = get.start()
    assert kinds(effects) == ["SendFetch", "AnswerGet"]
    assert get.on_reply("b", same) == []
    assert get.finished


def test_get_fails_when_too_few_answer_and_still_repairs_after_the_deadline() -> None:
    get = co.GetCoordination(b"k", None, (("b", None), ("c", None)), r=3, deadline_ms=100, prune_threshold=10)
    get.start()
    [failure] = get.on_failure("b")
    assert isinstance(failure, co.Fail) and "r=3 cannot be met: 1 of 3 replicas failed" in failure.message
    assert not get.finished, "c has not answered"
    assert get.on_tick(100) == []  # the deadline ends it: nothing to repair, no second answer
    assert get.finished


def test_merged_reply_is_a_lattice_join_of_what_came_back() -> None:
    a, b = record(b"x", actor="a"), record(b"y", actor="b")
    get = co.GetCoordination(b"k", a, (("b", None),), r=2, deadline_ms=100, prune_threshold=10)
    get.start()
    [answer, *_] = get.on_reply("b", b)
    assert isinstance(answer, co.AnswerGet) and answer.record is not None
    assert decode_record(answer.record) == versions.merge(decode_record(a), decode_record(b))


# ---- sloppy quorum ----


def test_a_failed_target_is_replaced_by_a_spare_fallback_carrying_its_hint() -> None:
    put = co.PutCoordination(b"k", b"rec", (("b", None), ("c", None)), w=3, deadline_ms=100, spares=("d", "e"))
    put.start()
    put.on_local(True)
    assert put.on_reply("b", False) == [co.SendReplicate("d", b"k", b"rec", "b")]
    # d, standing in for b, fails too: e stands in for b next.
    assert put.on_reply("d", False) == [co.SendReplicate("e", b"k", b"rec", "b")]
    assert put.on_reply("c", True) == []
    assert put.on_reply("e", True) == [co.AnswerPut()]
    assert put.finished


def test_down_replicas_do_not_lower_w() -> None:
    # Three replicas exist, two are down with no fallback: W=2 cannot be met, decided at once and
    # answered when our own store has reported.
    put = co.PutCoordination(b"k", b"rec", (), w=2, deadline_ms=100, replicas=3)
    assert put.start() == []
    [failure] = put.on_local(True)
    assert isinstance(failure, co.Fail) and failure.code == "quorum"
    assert "1 of 3 replicas stored the write (this node among them), 2 are down with no node to stand in" in failure.message


def test_pw_counts_only_primaries() -> None:
    put = co.PutCoordination(b"k", b"rec", (("b", None), ("d", "c")), w=2, deadline_ms=100, replicas=3, pw=3)
    assert kinds(put.start()) == ["SendReplicate", "SendReplicate"]
    assert put.on_local(True) == [] and put.on_reply("b", True) == []
    [failure] = put.on_reply("d", True)
    assert isinstance(failure, co.Fail) and "pw=3 cannot be met: 2 of the primaries could store it" in failure.message, (
        "c is down: three primaries cannot store it"
    )
    assert "3 of 3 replicas stored the write" in failure.message, "d stands in for c: w counts it, pw does not"
    relaxed = co.PutCoordination(b"k", b"rec", (("b", None), ("d", "c")), w=3, deadline_ms=100, replicas=3, pw=2)
    relaxed.start()
    relaxed.on_local(True)
    assert relaxed.on_reply("d", True) == [], "a fallback's store counts for w but not for pw"
    assert relaxed.on_reply("b", True) == [co.AnswerPut()]


def test_get_asks_fallbacks_with_their_hint_and_pr_counts_primaries() -> None:
    get = co.GetCoordination(b"k", None, (("b", None), ("d", "c")), r=2, deadline_ms=100, prune_threshold=10, replicas=3, pr=2)
    assert get.start() == [co.SendFetch("b", b"k", None), co.SendFetch("d", b"k", "c")]
    assert get.on_reply("d", None) == [], "r=2 is met but only one primary answered"
    [answer] = get.on_reply("b", None)
    assert isinstance(answer, co.AnswerGet)


def test_placement_puts_a_fallback_in_for_each_primary_that_is_down() -> None:
    from dynd.core.placement import coordinators, place
    from dynd.core.preflist import PreferenceList

    preference = PreferenceList(0, ("a", "b", "c"), ("d", "e"))
    down = {"b", "d"}
    placement = place(preference, "a", lambda node: node not in down)
    assert placement.targets == (("e", "b"), ("c", None))
    assert placement.spares == () and placement.unplaced == () and placement.replicas == 3
    alone = place(PreferenceList(0, ("a", "b", "c"), ()), "a", lambda node: node == "a")
    assert alone.targets == () and alone.unplaced == ("b", "c")
    assert coordinators(preference, "e", lambda node: node not in {"a", "b"}) == ["c", "d", "e"]
