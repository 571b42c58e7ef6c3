"""UUID4 text for new connections: its format, where its bytes come from, and forks."""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from unittest import mock

from hypothesis import given
from hypothesis import strategies as st

from prefork_tcp import uuids
from prefork_tcp.uuids import new_uuid

UUID4_TEXT = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


@contextmanager
def kernel_bytes(make_block: Callable[[int], bytes]) -> Iterator[list[int]]:
    """Serve ``os.urandom`` from ``make_block(call number)`` with an empty pool; yields the sizes asked.

    The pool is emptied before and after (as a fork empties it: in the compiled core it is
    not a Python variable), so no UUID made afterwards comes of these bytes.
    """
    asked: list[int] = []

    def urandom(size: int) -> bytes:
        asked.append(size)
        return make_block(len(asked))

    uuids._forget_pool()
    try:
        with mock.patch.object(uuids.os, "urandom", urandom):
            yield asked
    finally:
        uuids._forget_pool()


def expected(raw: bytes) -> str:
    """What the standard library makes of 16 random bytes for a version 4 UUID."""
    return str(uuid.UUID(bytes=raw, version=4))


def test_the_text_is_a_uuid4_the_standard_library_reads_back():
    for _ in range(2000):
        text = new_uuid()
        parsed = uuid.UUID(text)
        assert UUID4_TEXT.fullmatch(text), text
        assert str(parsed) == text and parsed.version == 4 and parsed.variant == uuid.RFC_4122


def test_many_are_distinct():
    seen = {new_uuid() for _ in range(50_000)}  # about 195 blocks of random bytes
    assert len(seen) == 50_000


@given(st.binary(min_size=16, max_size=16))
def test_sixteen_random_bytes_become_what_uuid4_makes_of_them(raw):
    with kernel_bytes(lambda call: raw * (uuids._BLOCK // 16)):
        assert new_uuid() == expected(raw)


def test_each_uuid_takes_the_next_sixteen_bytes_and_a_block_is_read_when_spent():
    blocks = {n: bytes((n * 7 + i) % 256 for i in range(uuids._BLOCK)) for n in (1, 2)}
    per_block = uuids._BLOCK // 16
    with kernel_bytes(blocks.__getitem__) as asked:
        texts = [new_uuid() for _ in range(per_block + 1)]
        assert asked == [uuids._BLOCK, uuids._BLOCK]  # one read per block, not one per uuid
    chunks = [blocks[1][i : i + 16] for i in range(0, uuids._BLOCK, 16)] + [blocks[2][:16]]
    assert texts == [expected(chunk) for chunk in chunks]


def test_a_forked_child_reads_its_own_bytes_instead_of_the_parents_block():
    blocks = {1: b"\x11" * uuids._BLOCK, 2: b"\x22" * uuids._BLOCK}
    with kernel_bytes(blocks.__getitem__) as asked:
        assert new_uuid() == expected(b"\x11" * 16)  # the parent still has most of block 1
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.write(write_end, f"{new_uuid()} {len(asked)}".encode())
            finally:
                os._exit(0)
        os.close(write_end)
        os.waitpid(pid, 0)
        with os.fdopen(read_end) as pipe:
            child, child_reads = pipe.read().split()
        assert child == expected(b"\x22" * 16) and child_reads == "2"  # block 2: a read of its own
        assert new_uuid() == expected(b"\x11" * 16) and asked == [uuids._BLOCK]  # the parent goes on with block 1
