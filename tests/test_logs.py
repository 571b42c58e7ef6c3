"""Logging helpers: text a client controls cannot forge a log line; repeated warnings are throttled."""

from __future__ import annotations

import logging

from hypothesis import given
from hypothesis import strategies as st

from prefork_tcp.logs import Throttle, printable


def test_printable_escapes_what_could_start_a_new_line_or_move_the_cursor():
    assert printable("plain ascii, é and ∑") == "plain ascii, é and ∑"
    assert printable("a\nb\rc\td\x1b[31m\x00") == "a\\nb\\rc\\td\\x1b[31m\\x00"


@given(st.text())
def test_printable_never_leaves_a_control_character(text):
    assert printable(text).isprintable()


def test_a_throttled_warning_is_logged_at_most_once_per_interval(caplog):
    throttle = Throttle(logging.getLogger("test.throttle"), interval=3600.0)
    with caplog.at_level(logging.WARNING, logger="test.throttle"):
        for n in range(100):
            throttle.warn("emfile", "out of descriptors (%d)", n)
        throttle.warn("other", "another kind")
    assert [r.getMessage() for r in caplog.records] == ["out of descriptors (0)", "another kind"]
