"""The shared scoreboard: what a worker's slot writer stores is what the master's row reads."""

from __future__ import annotations

import math
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prefork_tcp.scoreboard import (
    ACTIVITY,
    CONNECTIONS,
    COUNTERS,
    FIELDS,
    MAX_SERVERS,
    PID,
    SLOT_BYTES,
    STARTED,
    STATE,
    Closed,
    Counts,
    Row,
    Scoreboard,
    SlotWriter,
    State,
)

MAX_COUNT = 1 << 48
U64 = st.integers(min_value=0, max_value=(1 << 64) - 1)


def serving(board: Scoreboard, *connections: int) -> list[SlotWriter]:
    """Claim one slot per count, each serving that many connections."""
    writers = []
    for count in connections:
        writer = SlotWriter(board, board.claim(pid=100 + len(writers), started=1.0))
        writer.set_state(State.SERVING)
        writer.set_connections(count)
        writers.append(writer)
    return writers


def test_a_slot_is_one_cache_line_and_the_fields_are_distinct():
    assert (FIELDS, SLOT_BYTES) == (8, 64)
    assert len({PID, STATE, ACTIVITY, CONNECTIONS, STARTED}) == 5 and max(PID, STATE, ACTIVITY, CONNECTIONS, STARTED) < FIELDS
    board = Scoreboard(3)
    # the slots, the count of used ones, the slots' counters
    assert len(board.ints) == len(board.signed) == len(board.floats) == 3 * FIELDS + 1 + 3 * COUNTERS


def test_a_new_board_is_all_free_zeros():
    board = Scoreboard(2)
    assert [board.row(slot) for slot in range(2)] == [Row(slot, 0, State.FREE, 0, 0, 0, 0.0) for slot in range(2)]
    assert board.ints[board.used_index] == 0


def test_a_claimed_slot_is_booting_with_its_pid_and_start_time():
    board = Scoreboard(2)
    slot = board.claim(pid=1234, started=56.5)
    assert board.row(slot) == Row(slot, 1234, State.BOOTING, 0, 0, 0, 56.5)
    board.set_pid(slot, 99)
    assert board.row(slot).pid == 99


@settings(max_examples=200)
@given(
    st.integers(min_value=0, max_value=3),
    st.sampled_from(State),
    st.integers(min_value=0, max_value=MAX_COUNT),
    st.integers(min_value=-MAX_COUNT, max_value=MAX_COUNT),
)
def test_what_the_writer_stores_the_row_reads_back(slot, state, connections, activity):
    board = Scoreboard(4)
    writer = SlotWriter(board, slot)
    writer.set_state(state)
    writer.set_connections(connections)
    writer.signed[writer.activity_index] = activity  # as the event loop stores it
    row = board.row(slot)
    assert (row.slot, row.state, row.connections) == (slot, state, connections)
    assert row.busy == max(activity, 0)  # +N: event N is running; -N: waiting after N events
    assert row.events == abs(activity)
    assert all(board.row(other) == Row(other, 0, State.FREE, 0, 0, 0, 0.0) for other in range(4) if other != slot)


def test_activity_marks_follow_the_event_loop():
    board = Scoreboard(1)
    writer = SlotWriter(board, 0)
    seen = []
    for mark in (1, -1, 2, 3, -3):  # event 1 runs, waits, events 2 and 3 run back to back, waits
        writer.signed[writer.activity_index] = mark
        row = board.row(0)
        seen.append((row.busy, row.events))
    assert seen == [(1, 1), (0, 1), (2, 2), (3, 3), (0, 3)]


@settings(max_examples=300)
@given(st.lists(st.tuples(st.integers(0, FIELDS - 1), U64), max_size=FIELDS), U64)
def test_whatever_a_worker_scribbles_a_row_is_in_bounds(stores, used):
    board = Scoreboard(2)
    for field, value in stores:
        board.ints[FIELDS + field] = value  # slot 1
    board.ints[board.used_index] = used
    row = board.row(1)
    assert isinstance(row.state, State)
    assert 0 <= row.busy <= MAX_COUNT and 0 <= row.events <= MAX_COUNT and 0 <= row.connections <= MAX_COUNT
    assert math.isfinite(row.started)
    assert row.busy in (0, row.events)
    SlotWriter(board, 0).above_fair_share(10, 1.1)  # the used count is not trusted either


@pytest.mark.parametrize(
    "field, value, seen",
    [
        (STATE, max(State) + 1, State.FREE),
        (STATE, 1 << 63, State.FREE),
        (CONNECTIONS, (1 << 64) - 1, MAX_COUNT),
        (CONNECTIONS, MAX_COUNT + 1, MAX_COUNT),
        (CONNECTIONS, MAX_COUNT, MAX_COUNT),
        (ACTIVITY, 1 << 62, MAX_COUNT),  # busy and events both clamped
        (ACTIVITY, 1 << 63, MAX_COUNT),  # the most negative signed value: events only
    ],
)
def test_out_of_range_fields_are_clamped(field, value, seen):
    board = Scoreboard(1)
    board.ints[field] = value
    row = board.row(0)
    assert {STATE: row.state, CONNECTIONS: row.connections, ACTIVITY: row.events}[field] == seen
    if field == ACTIVITY:
        assert row.busy == (MAX_COUNT if value < 1 << 63 else 0)


@pytest.mark.parametrize("started, seen", [(math.nan, 0.0), (math.inf, 0.0), (-math.inf, 0.0), (-1.5, -1.5), (1e300, 1e300)])
def test_a_start_time_that_is_not_a_finite_number_reads_as_zero(started, seen):
    board = Scoreboard(1)
    board.ints[STARTED] = struct.unpack("<Q", struct.pack("<d", started))[0]  # a worker writing raw bits
    assert board.row(0).started == seen


def test_reset_zeroes_one_slot_and_leaves_its_neighbours():
    board = Scoreboard(3)
    writers = serving(board, 5, 6, 7)
    for writer in writers:
        writer.signed[writer.activity_index] = -9
    board.reset(1)
    assert board.row(1) == Row(1, 0, State.FREE, 0, 0, 0, 0.0)
    assert [(board.row(s).pid, board.row(s).connections, board.row(s).events) for s in (0, 2)] == [(100, 5, 9), (102, 7, 9)]


def test_claim_takes_the_first_free_slot_and_refuses_when_all_are_taken():
    board = Scoreboard(3)
    assert [board.claim(pid, 1.0) for pid in (1, 2, 3)] == [0, 1, 2]
    with pytest.raises(RuntimeError, match="all 3 scoreboard slots are in use"):
        board.claim(4, 1.0)
    board.reset(1)
    assert board.claim(5, 2.0) == 1 and board.row(1).pid == 5


def test_claim_trusts_the_masters_list_of_live_slots_over_the_states():
    board = Scoreboard(3)
    writers = serving(board, 4, 4)
    writers[0].set_state(State.FREE)  # a worker scribbled over its own state
    assert board.claim(7, 3.0, taken={0, 1}) == 2
    board.ints[STATE] = State.SERVING  # a dead worker's slot still reads as serving
    board.set_pid(0, 55)
    assert board.claim(8, 4.0, taken={1, 2}) == 0
    assert board.row(0) == Row(0, 8, State.BOOTING, 0, 0, 0, 4.0)  # the old contents are gone
    with pytest.raises(RuntimeError):
        board.claim(9, 5.0, taken=frozenset({0, 1, 2}))


def test_the_used_count_grows_with_the_highest_claimed_slot_and_stays_within_the_board():
    board = Scoreboard(4)
    assert board.claim(1, 1.0, taken={0, 1}) == 2
    assert board.ints[board.used_index] == 3
    assert board.claim(2, 1.0) == 0
    assert board.ints[board.used_index] == 3  # never shrinks on a lower slot
    board.ints[board.used_index] = 1 << 40  # scribbled
    board.claim(3, 1.0)
    assert board.ints[board.used_index] == 4


def test_fair_share_counts_only_serving_workers_and_needs_two():
    board = Scoreboard(8)
    first, second = serving(board, 10, 6)
    for state, count in ((State.RETIRING, 50), (State.BOOTING, 0)):
        other = SlotWriter(board, board.claim(0, 1.0))
        other.set_state(state)
        other.set_connections(count)
    # serving: 10 and 6, an average of 8: more than 8 * margin + 1 is above the share
    assert first.above_fair_share(10, 1.1) and not first.above_fair_share(9, 1.1)
    assert second.above_fair_share(10, 1.0) and not second.above_fair_share(9, 1.0)
    alone = Scoreboard(2)
    (only,) = serving(alone, 1000)
    assert not only.above_fair_share(10**6, 1.0)


def test_fair_share_does_not_look_past_the_used_slots():
    board = Scoreboard(4)
    first, second = serving(board, 1, 1)
    third = SlotWriter(board, 3)  # never claimed: beyond the used count
    third.set_state(State.SERVING)
    third.set_connections(10**6)
    assert first.above_fair_share(4, 1.0)  # 4 > 1 + 1, whatever slot 3 says


@settings(max_examples=300)
@given(st.lists(st.integers(0, 10_000), min_size=2, max_size=6), st.integers(0, 20_000), st.floats(1.0, 3.0))
def test_fair_share_is_more_than_margin_times_the_average_plus_one(counts, connections, margin):
    board = Scoreboard(len(counts))
    writers = serving(board, *counts)
    average = sum(counts) / len(counts)
    above = writers[0].above_fair_share(connections, margin)
    if connections > average * margin + 1 + 1e-6:
        assert above
    elif connections < average * margin + 1 - 1e-6:
        assert not above


# -- counters (the metrics) ---------------------------------------------------------------------------

NOTHING = Counts((0,) * len(Closed), 0, 0, 0, (0, 0), (0, 0))


@settings(max_examples=200)
@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("closed"), st.sampled_from(Closed)),
            st.tuples(st.just("accepted"), st.integers(-1, MAX_SERVERS + 1), st.integers(1, 50)),
            st.tuples(st.just("opened"), st.integers(-1, MAX_SERVERS + 1), st.integers(1, 50)),
            st.tuples(st.just("left"), st.integers(-1, MAX_SERVERS + 1)),
            st.tuples(st.just("refused")),
        ),
        max_size=60,
    )
)
def test_counters_count_what_the_worker_did_and_open_connections_never_go_below_zero(steps):
    board = Scoreboard(3)
    slot = board.claim(1, 1.0)
    writer = SlotWriter(board, slot)
    closed = [0] * len(Closed)
    accepted = [0] * MAX_SERVERS
    open_ = [0] * MAX_SERVERS
    refused = 0
    for step in steps:
        if step[0] == "closed":
            writer.closed(step[1])
            closed[step[1]] += 1
        elif step[0] == "refused":
            writer.header_refused()
            refused += 1
        elif step[0] == "left":
            writer.left(step[1])
            if 0 <= step[1] < MAX_SERVERS:
                open_[step[1]] = max(0, open_[step[1]] - 1)
        else:
            getattr(writer, step[0])(step[1], step[2])
            if 0 <= step[1] < MAX_SERVERS:  # a server past the counters is not counted
                (accepted if step[0] == "accepted" else open_)[step[1]] += step[2]
    counts = board.counts(slot, MAX_SERVERS)
    assert counts == Counts(tuple(closed), 0, 0, refused, tuple(open_), tuple(accepted))
    assert board.counts(slot, 2) == Counts(tuple(closed), 0, 0, refused, tuple(open_[:2]), tuple(accepted[:2]))
    assert all(board.counts(other, 2) == NOTHING for other in range(3) if other != slot)
    board.reset(slot)
    assert board.counts(slot, 2) == NOTHING


def test_the_loop_counts_connected_and_close_events_at_lifecycle_index():
    board = Scoreboard(2)
    writer = SlotWriter(board, 1)
    writer.ints[writer.lifecycle_index] += 3  # CONNECTED
    writer.ints[writer.lifecycle_index + True] += 2  # CLOSE: the loop adds ``event is CLOSE``
    counts = board.counts(1, 1)
    assert (counts.connected_events, counts.close_events) == (3, 2)
    assert board.row(1) == Row(1, 0, State.FREE, 0, 0, 0, 0.0)  # the slot's fields are elsewhere


@settings(max_examples=100)
@given(st.lists(U64, min_size=COUNTERS, max_size=COUNTERS))
def test_scribbled_counters_read_clamped(values):
    board = Scoreboard(2)
    base = board.counters_base(1)
    board.ints[base : base + COUNTERS] = memoryview(struct.pack(f"<{COUNTERS}Q", *values)).cast("Q")
    counts = board.counts(1, MAX_SERVERS)
    numbers = [*counts.closed, counts.connected_events, counts.close_events, counts.headers_refused, *counts.open, *counts.accepted]
    assert all(0 <= n <= MAX_COUNT for n in numbers)
    assert board.counts(0, MAX_SERVERS).open == (0,) * MAX_SERVERS  # the neighbour is untouched
