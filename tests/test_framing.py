"""The framer against every way of splitting a byte stream (sans-IO, no server)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prefork_tcp.framing import Framer, MessageTooLarge, StreamFramer, make_framer

DELIMITERS = [b"\r\n", b"\n", b".", b"<END>", b"aa", b"aba", b"\x00"]


def reference(stream: bytes, delimiter: bytes) -> tuple[list[bytes], bytes]:
    """Messages and leftover by the plain left-to-right definition."""
    messages, pos = [], 0
    while (i := stream.find(delimiter, pos)) >= 0:
        messages.append(stream[pos : i + len(delimiter)])
        pos = i + len(delimiter)
    return messages, stream[pos:]


def feed_all(framer: Framer, chunks: list[bytes]) -> list[bytes]:
    out: list[bytes] = []
    for chunk in chunks:
        out.extend(framer.feed(chunk))
    return out


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0] + points, points + [len(data)], strict=True)]


@settings(max_examples=500, deadline=None)
@given(
    delimiter=st.sampled_from(DELIMITERS),
    pieces=st.lists(st.sampled_from([b"a", b"b", b"\r", b"\n", b".", b"<", b"END>", b"x" * 7, b"\x00"]), max_size=60),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=20),
)
def test_any_split_gives_the_same_messages(delimiter, pieces, cuts):
    stream = b"".join(pieces)
    framer = Framer(delimiter, max_size=1 << 20)
    messages = feed_all(framer, split_at(stream, cuts))
    expected, leftover = reference(stream, delimiter)
    assert messages == expected
    assert framer.pending == len(leftover)
    assert framer.take_partial() == leftover
    assert framer.pending == 0


@settings(max_examples=300, deadline=None)
@given(
    delimiter=st.sampled_from(DELIMITERS),
    sizes=st.lists(st.integers(min_value=0, max_value=40), min_size=1, max_size=10),
    limit=st.integers(min_value=1, max_value=30),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=10),
)
def test_size_limit_does_not_depend_on_splits(delimiter, sizes, limit, cuts):
    filler = b"z"
    stream = b"".join(filler * n + delimiter for n in sizes)
    framer = Framer(delimiter, max_size=limit)
    if max(sizes) > limit:
        with pytest.raises(MessageTooLarge):
            feed_all(framer, split_at(stream, cuts))
    else:
        assert feed_all(framer, split_at(stream, cuts)) == [filler * n + delimiter for n in sizes]


@settings(max_examples=300, deadline=None)
@given(
    delimiter=st.sampled_from([b"\r\n", b"aab", b"abab", b"aaab", b"aaaab"]),
    runs=st.lists(
        st.tuples(st.integers(min_value=0, max_value=40), st.sampled_from([b"a", b"ab", b"aa", b"b", b"\r", b"\r\r"])),
        max_size=12,
    ),
    cuts=st.lists(st.integers(min_value=0, max_value=2_000), max_size=4),
)
def test_runs_of_false_starts_give_the_same_messages(delimiter, runs, cuts):
    """Many near-delimiters in a row: the compiled search hands a long run of false starts
    to memmem part-way through a search (cframing.pxd); the messages must not change."""
    stream = b"".join(piece * count + (delimiter if count % 3 == 0 else b"") for count, piece in runs)
    framer = Framer(delimiter, max_size=1 << 20)
    expected, leftover = reference(stream, delimiter)
    assert feed_all(framer, split_at(stream, cuts)) == expected
    assert framer.take_partial() == leftover


@settings(max_examples=300, deadline=None)
@given(
    delimiter=st.sampled_from([*DELIMITERS, b""]),
    pieces=st.lists(st.sampled_from([b"a", b"\r", b"\n", b".", b"<END>", b"x" * 7, b"\x00"]), max_size=40),
    cuts=st.lists(st.integers(min_value=0, max_value=1_000), max_size=10),
)
def test_a_tag_makes_each_message_an_event_and_changes_nothing_else(delimiter, pieces, cuts):
    """``feed(data, tag, event)`` gives ``(tag, event, message)`` for each message that
    ``feed(data)`` gives, in C where compiled; the framer's state moves the same."""
    plain, tagged = make_framer(delimiter, 1 << 20), make_framer(delimiter, 1 << 20)
    tag = object()
    for chunk in split_at(b"".join(pieces), cuts):
        messages = plain.feed(chunk)
        assert tagged.feed(chunk, tag, "DATA") == [(tag, "DATA", m) for m in messages]
        assert (tagged.pending, tagged.probe, tagged.started) == (plain.pending, plain.probe, plain.started)
    assert tagged.take_partial() == plain.take_partial()


@settings(max_examples=200, deadline=None)
@given(
    delimiter=st.sampled_from([*DELIMITERS, b""]),
    used=st.binary(max_size=30),
    pieces=st.lists(st.sampled_from([b"a", b"\r\n", b"\n", b".", b"<END>", b"x" * 9]), max_size=30),
    max_size=st.integers(min_value=1, max_value=12),
    read_size=st.sampled_from([4, 16, 65536]),
)
def test_a_fresh_framer_is_a_new_one_whatever_the_old_one_holds(delimiter, used, pieces, max_size, read_size):
    """Each accepted connection gets ``fresh()`` of its listener's framer: nothing of the
    framer it was made from (pending bytes, counts) may leak into it."""
    old = make_framer(delimiter, max_size, read_size)
    try:
        old.feed(used)
    except MessageTooLarge:
        pass
    fresh, new = old.fresh(), make_framer(delimiter, max_size, read_size)
    assert fresh is not old or isinstance(old, StreamFramer)

    def outcome(framer):
        try:
            return [framer.feed(piece) for piece in pieces], framer.pending, framer.probe, framer.started
        except MessageTooLarge as exc:
            return exc.size

    assert outcome(fresh) == outcome(new)


def test_a_tagged_message_over_the_limit_raises_as_an_untagged_one():
    with pytest.raises(MessageTooLarge):
        Framer(b"\n", max_size=3).feed(b"ab\nabcd\n", "conn", "DATA")


def test_partial_message_over_the_limit_raises_before_its_delimiter():
    framer = Framer(b"\r\n", max_size=4)
    assert framer.feed(b"1234\r") == []  # could still become a 4-byte message
    with pytest.raises(MessageTooLarge) as info:
        framer.feed(b"5")
    assert info.value.limit == 4


def test_one_whole_message_is_returned_without_copying():
    data = b"PING\r\n"
    assert Framer(b"\r\n", 100).feed(data)[0] is data


def test_trickle_of_single_bytes_is_linear():
    framer = Framer(b"\r\n", max_size=1 << 20)
    for _ in range(200_000):
        assert framer.feed(b"x") == []
    assert framer.feed(b"\r\n") == [b"x" * 200_000 + b"\r\n"]


def test_stream_mode_returns_every_chunk():
    framer = make_framer(b"", 10)
    assert isinstance(framer, StreamFramer)
    assert framer.feed(b"abc") == [b"abc"]
    assert framer.feed(b"") == []
    assert framer.take_partial() == b""


def test_empty_delimiter_needs_stream_framer():
    with pytest.raises(ValueError):
        Framer(b"", 10)


def whole_message(framer: Framer | StreamFramer, data: bytes) -> bool:
    """The worker loop's shortcut for a read that is exactly one message (worker.py, ``pump``)."""
    _, found, rest = data.partition(framer.probe)
    return bool(found) and not rest


@settings(max_examples=500, deadline=None)
@given(
    delimiter=st.sampled_from([*DELIMITERS, b""]),
    pending=st.sampled_from([b"", b"a", b"\r", b"<EN"]),
    data=st.lists(st.sampled_from([b"a", b"b", b"\r", b"\n", b".", b"<", b"END>", b"x" * 7, b"\x00"]), min_size=1).map(b"".join),
    max_size=st.integers(min_value=0, max_value=40),
    read_size=st.integers(min_value=1, max_value=60),
)
def test_the_loops_whole_message_shortcut_agrees_with_feed(delimiter, pending, data, max_size, read_size):
    framer = make_framer(delimiter, max_size, read_size)
    try:
        framer.feed(pending)
    except MessageTooLarge:
        return
    data = data[:read_size]  # the loop never reads more at once
    if whole_message(framer, data):
        assert framer.feed(data) == [data] and framer.pending == 0


def test_the_shortcut_takes_a_lone_message_unless_something_is_pending_or_reads_can_be_too_large():
    framer = make_framer(b"\r\n", 10, read_size=12)
    assert whole_message(framer, b"PING\r\n")
    assert not whole_message(framer, b"PING\r\nPI")  # more than one message
    framer.feed(b"PI")
    assert not whole_message(framer, b"NG\r\n")  # its start is pending
    assert framer.feed(b"NG\r\n") == [b"PING\r\n"] and whole_message(framer, b"PING\r\n")
    framer.feed(b"x")
    framer.take_partial()
    assert whole_message(framer, b"PING\r\n")
    assert not whole_message(make_framer(b"\r\n", 10, read_size=13), b"PING\r\n")  # a read could hold 11 + 2
