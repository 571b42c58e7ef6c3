"""Supervisor decisions and the scoreboard, without processes."""

from __future__ import annotations

import os
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prefork_tcp.scoreboard import Row, Scoreboard, SlotWriter, State
from prefork_tcp.supervisor import Activity, Limits, Verdict, Watch, jittered_max_jobs, judge

NOW = 1000.0


def row(**kw) -> Row:
    base = dict(slot=0, pid=1, state=State.SERVING, busy=0, events=0, connections=0, started=NOW - 10)
    return Row(**{**base, **kw})


def decide(
    limits: Limits, max_jobs: int = 0, rss_mb: float | None = None, busy_since: float = 0.0, last_event: float = NOW - 1, **kw
) -> Verdict | None:
    return judge(row(**kw), Activity(busy_since, last_event), limits, NOW, max_jobs, rss_mb)


def test_no_limits_no_verdict():
    assert decide(Limits(), rss_mb=10**6, events=10**9, busy=10**9, started=0.0, busy_since=1.0) is None


def test_exec_ttl_kills_a_stuck_event_even_while_retiring():
    limits = Limits(exec_ttl=5)
    assert decide(limits, busy=3, busy_since=NOW - 4.9) is None
    for state in (State.SERVING, State.RETIRING):
        verdict = decide(limits, state=state, busy=3, busy_since=NOW - 5.1)
        assert verdict is not None and verdict.action == "kill" and "exec_ttl" in verdict.reason and verdict.limit == "exec_ttl"


def test_max_jobs_uses_the_workers_own_budget_and_counts_the_event_in_progress():
    assert decide(Limits(max_jobs=100), 110, events=99) is None
    assert decide(Limits(max_jobs=100), 110, events=110) == Verdict("retire", "handled 110 events (max_jobs 110)", "max_jobs")
    assert decide(Limits(max_jobs=100), 110, events=110, busy=110) == Verdict("retire", "handled 110 events (max_jobs 110)", "max_jobs")


def test_ttl_idle_ttl_and_memory_retire():
    assert decide(Limits(ttl=60), started=NOW - 61)[::2] == ("retire", "ttl")
    assert decide(Limits(ttl=60), started=NOW - 59) is None
    assert decide(Limits(idle_ttl=30), last_event=NOW - 31, started=NOW - 100)[::2] == ("retire", "idle_ttl")
    assert decide(Limits(idle_ttl=30), last_event=NOW - 31, busy=5, busy_since=NOW - 31) is None
    assert decide(Limits(idle_ttl=30), last_event=0.0, started=NOW - 10) is None  # new, never used
    assert decide(Limits(max_worker_memory=100), rss_mb=101).reason.startswith("uses 101 MB")
    assert decide(Limits(max_worker_memory=100), rss_mb=101).limit == "max_worker_memory"
    assert decide(Limits(max_worker_memory=100), rss_mb=99) is None


@pytest.mark.parametrize("state", [State.FREE, State.BOOTING])
def test_workers_not_ready_are_left_to_allocate_timeout(state):
    assert decide(Limits(max_jobs=1, exec_ttl=1), 1, state=state, busy=7, busy_since=1.0, events=10**6) is None


def test_busy_marks_are_needed_by_exec_ttl_and_idle_ttl_only():
    assert not Limits(max_jobs=5, ttl=60, max_worker_memory=100).needs_busy
    assert Limits(exec_ttl=1).needs_busy and Limits(idle_ttl=1).needs_busy


def test_retiring_workers_are_not_retired_again():
    assert decide(Limits(max_jobs=1), 1, state=State.RETIRING, events=10) is None


def test_watch_times_what_it_observes():
    watch = Watch()
    assert watch.observe(row(), 1.0) == Activity(0.0, 0.0)  # nothing handed out yet
    assert watch.observe(row(busy=1, events=1), 2.0) == Activity(2.0, 2.0)  # event 1 seen in progress
    assert watch.observe(row(busy=1, events=1), 3.0) == Activity(2.0, 2.0)  # the same event: still since 2.0
    assert watch.observe(row(busy=4, events=4), 4.0) == Activity(4.0, 4.0)  # a later event
    assert watch.observe(row(events=4), 5.0) == Activity(0.0, 4.0)  # waiting; nothing new
    assert watch.observe(row(events=9), 6.0) == Activity(0.0, 6.0)  # events came and went between looks
    assert watch.observe(row(events=9), 7.0) == Activity(0.0, 6.0)
    assert watch.observe(row(pid=2), 8.0) == Activity(0.0, 0.0)  # a new worker in the slot
    assert watch.observe(row(slot=1, busy=1, events=1), 9.0) == Activity(9.0, 9.0)  # slots are apart


@given(st.integers(min_value=0, max_value=10**7), st.integers(min_value=0))
def test_jitter_stays_within_fifteen_percent(max_jobs, seed):
    budget = jittered_max_jobs(max_jobs, random.Random(seed))
    assert max_jobs <= budget and budget * 100 <= max_jobs * 115  # integers: 1.15 * 180 < 207 in floats
    assert (budget == 0) == (max_jobs == 0)


def test_jitter_spreads_budgets():
    rng = random.Random(1)
    assert len({jittered_max_jobs(1000, rng) for _ in range(50)}) > 10


def test_scoreboard_slots_are_shared_with_a_forked_child():
    board = Scoreboard(4)
    slot = board.claim(pid=0, started=5.0)
    assert board.claim(pid=0, started=6.0) == slot + 1
    pid = os.fork()
    if pid == 0:  # the child writes its slot, as a worker does
        writer = SlotWriter(board, slot)
        writer.set_state(State.SERVING)
        writer.signed[writer.activity_index] = 1  # event 1 in progress, as the event loop stores it
        writer.signed[writer.activity_index] = -1  # waiting, 1 event handled
        writer.signed[writer.activity_index] = 2  # busy again
        writer.set_connections(42)
        os._exit(0)
    os.waitpid(pid, 0)
    board.set_pid(slot, pid)
    seen = board.row(slot)
    assert (seen.pid, seen.state, seen.busy, seen.events, seen.connections) == (pid, State.SERVING, 2, 2, 42)
    assert seen.started == 5.0
    board.reset(slot)
    assert board.row(slot).state == State.FREE
    assert board.claim(pid=9, started=1.0) == slot


def test_close_requests_settle_on_found_all_answers_death_or_deadline():
    from prefork_tcp.closing import CloseRequests

    results: list[tuple[str, bool]] = []
    requests = CloseRequests()
    assert requests.start("none", set(), 10.0, lambda f: results.append(("none", f))) is None
    first = requests.start("a", {1, 2, 3}, 10.0, lambda f: results.append(("a", f)))
    requests.answer(first, 1, False)
    requests.answer(first, 2, True)  # found: no need to wait for 3
    second = requests.start("b", {1, 2}, 10.0, lambda f: results.append(("b", f)))
    requests.answer(second, 1, False)
    requests.gone(2)
    third = requests.start("c", {4}, 5.0, lambda f: results.append(("c", f)))
    requests.expire(4.9)
    requests.expire(5.0)
    requests.answer(third, 4, True)  # too late: already settled
    assert results == [("none", False), ("a", True), ("b", False), ("c", False)]
    assert requests.pending == {}


def test_fair_share_counts_only_serving_workers():
    board = Scoreboard(8)
    writers = []
    for connections, state in [(10, State.SERVING), (6, State.SERVING), (50, State.RETIRING), (0, State.BOOTING)]:
        writer = SlotWriter(board, board.claim(0, 1.0))
        writer.set_state(state)
        writer.set_connections(connections)
        writers.append(writer)
    # serving: 10 and 6 connections, an average of 8; the retiring and booting ones do not count
    assert writers[0].above_fair_share(10, 1.1)  # 10 > 8 * 1.1 + 1
    assert not writers[1].above_fair_share(6, 1.1)
    assert not writers[0].above_fair_share(9, 1.1)  # 9 <= 9.8
    alone = Scoreboard(2)
    only = SlotWriter(alone, alone.claim(0, 1.0))
    only.set_state(State.SERVING)
    assert not only.above_fair_share(1000, 1.1)  # a single worker never yields
