"""The timeout rules as pure decisions on a connection's marks, sweep after sweep."""

from __future__ import annotations

from types import SimpleNamespace

from hypothesis import given, settings
from hypothesis import strategies as st

from prefork_tcp.framing import Framer
from prefork_tcp.timeouts import Timeouts, expired, sweep_interval


def conn(idle: float = 0.0, read: float = 0.0, write: float = 0.0, **state: object) -> SimpleNamespace:
    marks = dict(
        timeouts=Timeouts(idle, read, write),
        open=True,
        reading=True,
        framer=SimpleNamespace(pending=0, started=0),
        out_size=0,
        active=True,
        idle_since=0.0,
        partial_seen=-1,
        partial_since=0.0,
        wrote=False,
        write_since=0.0,
    )
    marks.update(state)
    return SimpleNamespace(**marks)


def test_sweep_interval_is_a_quarter_of_the_shortest_timeout_within_bounds():
    assert sweep_interval([Timeouts()]) == 0.0
    assert sweep_interval([Timeouts(read=60, write=60)]) == 1.0
    assert sweep_interval([Timeouts(idle=2), Timeouts(read=60)]) == 0.5
    assert sweep_interval([Timeouts(write=0.01)]) == 0.05


def test_idle_counts_from_the_sweep_that_last_saw_activity():
    c = conn(idle=10)
    assert expired(c, 100.0) is None and c.idle_since == 100.0 and not c.active  # new: the clock starts
    assert expired(c, 109.0) is None
    c.active = True  # a read or a send made progress
    assert expired(c, 109.5) is None
    assert expired(c, 119.0) is None
    assert expired(c, 119.5) == "idle_timeout"


def test_read_timeout_follows_one_unfinished_message_not_the_next():
    c = conn(read=5)
    c.framer.pending, c.framer.started = 3, 1
    assert expired(c, 10.0) is None  # first seen now
    assert expired(c, 14.0) is None
    c.framer.started = 2  # that message finished and another began between two sweeps
    assert expired(c, 16.0) is None and c.partial_since == 16.0
    assert expired(c, 21.0) == "read_timeout"


def test_read_timeout_pauses_while_the_server_does_not_read_and_when_nothing_is_pending():
    c = conn(read=5)
    c.framer.pending, c.framer.started = 3, 1
    assert expired(c, 0.0) is None
    c.reading = False  # held back: a slow reader, or the output is full
    assert expired(c, 10.0) is None and c.partial_seen == -1
    c.reading = True
    assert expired(c, 11.0) is None  # the clock restarts
    assert expired(c, 15.0) is None
    c.framer.pending = 0
    assert expired(c, 30.0) is None


def test_write_timeout_needs_output_that_makes_no_progress():
    c = conn(write=5, out_size=100)
    assert expired(c, 0.0) is None and c.write_since == 0.0  # first seen: now (0.0 is "not seen")
    assert expired(c, 1.0) is None and c.write_since == 1.0
    c.wrote = True
    assert expired(c, 4.0) is None and c.write_since == 4.0
    assert expired(c, 8.5) is None
    assert expired(c, 9.0) == "write_timeout"
    c.out_size = 0
    assert expired(c, 50.0) is None and c.write_since == 0.0


def test_a_finished_connection_is_checked_for_write_timeout_only():
    c = conn(idle=1, read=1, write=5, open=False, out_size=10, active=False)
    c.framer.pending, c.framer.started = 3, 1
    assert expired(c, 100.0) is None
    assert expired(c, 104.0) is None
    assert expired(c, 105.0) == "write_timeout"


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([b"a", b"bc", b"\r", b"\n", b"\r\n", b"x\r\ny"]), max_size=30))
def test_framer_counts_each_unfinished_message_begun(chunks):
    """``started`` changes exactly when a new message is left unfinished after a feed."""
    framer = Framer(b"\r\n", 1 << 20)
    for chunk in chunks:
        before, pending_before = framer.started, framer.peek_partial()
        messages = framer.feed(chunk)
        if framer.pending and (messages or not pending_before):
            assert framer.started == before + 1
        else:
            assert framer.started == before
