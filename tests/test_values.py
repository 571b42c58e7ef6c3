"""Parsers of single config values: what each accepts, what it gives, and its error text."""

from __future__ import annotations

import math
import os
import pwd
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prefork_tcp import values
from prefork_tcp.sockets import Address

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# -- durations --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, seconds",
    [
        ("500ms", 0.5),
        ("60s", 60),
        ("1m30s", 90),
        ("2h", 7200),
        ("1.5s", 1.5),
        ("0", 0),
        ("0s", 0),
        ("1h2m3s", 3723),
        ("250us", 0.00025),
        (30, 30),
        (0.25, 0.25),
    ],
)
def test_durations(text, seconds):
    assert values.duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text, seconds",
    [("1ns", 1e-9), ("3µs", 3e-6), (".5s", 0.5), ("1.s", 1.0), (" 1s ", 1.0), ("1h1h", 7200), ("90s1m", 150), ("168h", 604800)],
)
def test_more_duration_forms(text, seconds):
    assert values.duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text",
    ["", "s", "1", "1x", "-1s", "1s2", " 1 s", "1m 30s", True, None, -3, "1e400", "١s", float("inf"), float("nan"), 10**400, "169h", [1]],
)
def test_bad_durations(text):
    with pytest.raises(ValueError):
        values.duration(text)


@given(st.floats(min_value=0, max_value=168 * 3600, allow_nan=False) | st.floats(min_value=0, max_value=1e-3))
def test_formatted_durations_parse_back(seconds):
    assert values.duration(values.format_duration(seconds)) == pytest.approx(seconds, abs=1e-9)


def test_duration_units_land_exactly_on_the_bounds():
    assert values.duration("3600000ms") == values.duration("60m") == values.duration("1h") == 3600.0
    assert values.duration("604800s") == values.duration("168h") == 604800.0


def test_durations_are_floats_and_never_negative_zero():
    assert type(values.duration(30)) is float and values.duration(30) == 30.0
    assert math.copysign(1.0, values.duration(-0.0)) == 1.0


def test_a_bounded_duration_checks_both_ends_and_names_them():
    tick = values.DurationBetween("10ms", "1h")
    assert tick("10ms") == 0.01 and tick(0.01) == 0.01 and tick("1h") == 3600.0 and tick(3600) == 3600.0
    for outside in ("9ms", "0", 0, "1h1ns", 3600.001):
        with pytest.raises(ValueError, match=r"^expected a duration from 10ms to 1h, got "):
            tick(outside)
    with pytest.raises(ValueError, match=r'^expected a duration from 10ms to 1h, written "500ms", "60s", "1m30s" or as a number'):
        tick("ten seconds")


def test_or_zero_takes_zero_below_the_lower_bound():
    keepalive = values.DurationBetween("1s", "32767s", or_zero=True)
    assert keepalive(0) == 0.0 and keepalive("0s") == 0.0 and keepalive("1s") == 1.0 and keepalive(32767) == 32767.0
    with pytest.raises(ValueError, match=r'^expected 0 or a duration from 1s to 32767s, got "500ms"$'):
        keepalive("500ms")


@pytest.mark.parametrize(
    "seconds, text",
    [
        (0, "0s"),
        (0.5, "500ms"),
        (0.00025, "0.25ms"),
        (1e-9, "0.000001ms"),
        (59.5, "59.5s"),
        (90, "1m30s"),
        (3600, "1h"),
        (3661, "1h1m1s"),
        (7200.5, "2h0.5s"),
        (86400, "24h"),
        (604800, "168h"),
    ],
)
def test_formatted_durations(seconds, text):
    assert values.format_duration(seconds) == text


@given(st.floats(min_value=0, max_value=1e6, allow_nan=False))
def test_formatted_durations_have_no_exponent(seconds):
    text = values.format_duration(seconds)
    assert "e" not in text and "+" not in text and "-" not in text


# -- integers, sizes and choices --------------------------------------------------------------


@given(st.integers(-5, 5), st.integers(0, 20), st.integers(-100, 100))
def test_an_integer_is_taken_exactly_when_it_is_within_bounds(lo, span, value):
    parse = values.IntBetween(lo, lo + span)
    if lo <= value <= lo + span:
        assert parse(value) == value
    else:
        with pytest.raises(ValueError, match=r"^expected an? "):
            parse(value)


@pytest.mark.parametrize(
    "parse, value, message",
    [
        (values.IntBetween(1, 256), 0, "expected a positive integer, got 0"),
        (values.IntBetween(1, 256), 257, "expected an integer from 1 to 256, got 257"),
        (values.IntBetween(0, 9), -1, "expected an integer >= 0, got -1"),
        (values.IntBetween(0, 9), True, "expected an integer >= 0, got true"),
        (values.IntBetween(0, 9), 1.0, "expected an integer >= 0, got 1.0"),
        (values.IntBetween(0, 9), "3", 'expected an integer >= 0, got "3"'),
    ],
)
def test_integer_errors_name_the_bound_broken(parse, value, message):
    with pytest.raises(ValueError) as info:
        parse(value)
    assert str(info.value) == message


@pytest.mark.parametrize("megabytes, size", [(1, 1 << 20), (0.5, 1 << 19), (16, 16 << 20), (16.0, 16 << 20), (1e-9, 1)])
def test_megabytes_become_bytes_and_never_zero(megabytes, size):
    assert values.MegabytesUpTo(16)(megabytes) == size


@pytest.mark.parametrize("megabytes", [0, -1, 16.0001, 17, float("inf"), float("nan"), True, "1", None])
def test_megabytes_out_of_bounds(megabytes):
    with pytest.raises(ValueError, match=r"^expected a number of megabytes above 0 and at most 16, got "):
        values.MegabytesUpTo(16)(megabytes)


def test_log_levels_fold_case_and_log_formats_do_not():
    assert values.log_level("WARNING") == "warning" and values.log_level("Debug") == "debug"
    assert values.log_format("json") == "json"
    for parse, bad in ((values.log_level, "loud"), (values.log_level, " info"), (values.log_level, 20), (values.log_format, "JSON")):
        with pytest.raises(ValueError, match=r"^expected "):
            parse(bad)


def test_one_of_names_its_choices():
    assert values.log_level.bounds == '"debug", "info", "warning", "error" or "critical"'
    with pytest.raises(ValueError, match=r'^expected one of debug, info, warning, error, critical, got "loud"$'):
        values.log_level("loud")


@pytest.mark.parametrize(
    "parse, bounds",
    [
        (values.IntBetween(1, 256), "1 to 256"),
        (values.DurationBetween("1s", "32767s", or_zero=True), "0 or 1s to 32767s"),
        (values.duration, "0s to 168h"),
        (values.MegabytesUpTo(16), "above 0, at most 16"),
        (values.log_format, '"text" or "json"'),
        (values.string, ""),
    ],
)
def test_parsers_state_their_bounds(parse, bounds):
    assert values.bounds(parse) == bounds


# -- strings, addresses, applications ---------------------------------------------------------


def test_strings_and_delimiters():
    assert values.string("") == "" and values.string("x y") == "x y"
    assert values.delimiter("\r\n") == b"\r\n" and values.delimiter("") == b"" and values.delimiter("é\x00") == b"\xc3\xa9\x00"
    with pytest.raises(ValueError, match="^expected a string, got 1$"):
        values.string(1)
    with pytest.raises(ValueError, match=r'^expected a string such as "\\r\\n" \(""'):
        values.delimiter(b"\n")


def test_addresses_parse_and_their_errors_show_the_value():
    assert values.address("tcp://[::1]:25") == Address("tcp", "::1", 25)
    assert values.address("unix:///run/a.sock") == Address("unix", path="/run/a.sock")
    with pytest.raises(ValueError) as info:
        values.address("127.0.0.1:70000")
    assert str(info.value) == 'port must be a number from 0 to 65535, got "127.0.0.1:70000"'
    with pytest.raises(ValueError, match='^expected an address such as "tcp://127.0.0.1:8889", got 8889$'):
        values.address(8889)


@pytest.mark.parametrize("spec", ["", "app", "pkg.mod:main", "_m:obj.attr", "m2:f_1"])
def test_application_specs(spec):
    assert values.app_spec(spec) == spec


@pytest.mark.parametrize("spec", ["not an app", "m:", ":f", "1m:f", "m:f:g", "m-x:f", "m:f ", None, 3])
def test_bad_application_specs(spec):
    with pytest.raises(ValueError, match='^expected an application as "module:callable", got '):
        values.app_spec(spec)


def test_an_application_spec_with_a_trailing_newline_is_refused():
    with pytest.raises(ValueError):
        values.app_spec("m:f\n")


# -- umask, user, group -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, mask", [(0o022, 0o022), (0, 0), (0o777, 0o777), ("022", 0o022), ("0o027", 0o027), ("777", 0o777), ("0", 0)]
)
def test_umasks(value, mask):
    assert values.umask(value) == mask


@pytest.mark.parametrize("value", [0o1000, -1, True, 1.5, "", "0o", "8", "999", "1000", "-1", "rwx", None])
def test_bad_umasks(value):
    with pytest.raises(ValueError, match="^expected an octal umask such as 0o022, got "):
        values.umask(value)


def test_users_and_groups_by_name_or_number():
    me = pwd.getpwuid(os.getuid())
    assert values.user(me.pw_name) == me.pw_name
    assert values.user(me.pw_uid) == str(me.pw_uid) and values.user(str(me.pw_uid)) == str(me.pw_uid)
    assert values.group(os.getgid()) == str(os.getgid())
    assert values.user("") == "" and values.group("") == ""  # unchanged


@pytest.mark.parametrize("value", ["no-such-user-here", "a\x00b", str(10**30), -1, "\u0661"])
def test_unknown_users_are_errors(value):
    with pytest.raises(ValueError, match="^no such user, got "):
        values.user(value)


def test_users_and_groups_of_the_wrong_type():
    with pytest.raises(ValueError, match="^expected a user name or uid, got 1.5$"):
        values.user(1.5)
    with pytest.raises(ValueError, match="^expected a group name or gid, got true$"):
        values.group(True)
    with pytest.raises(ValueError, match='^no such group, got "no-such-group-here"$'):
        values.group("no-such-group-here")


# -- environment references -------------------------------------------------------------------


ENV = {"PORT": "2525", "EMPTY": ""}


@pytest.mark.parametrize(
    "text, expanded",
    [
        ("${PORT}", "2525"),
        ("127.0.0.1:${PORT}", "127.0.0.1:2525"),
        ("${PORT}${PORT}", "25252525"),
        ("${UNSET}", ""),
        ("${UNSET:-127.0.0.1:1}", "127.0.0.1:1"),
        ("${EMPTY:-fallback}", "fallback"),  # set but empty counts as unset, as in the shell's :-
        ("${PORT:-9}", "2525"),
        ("${UNSET:-}", ""),
        ("$PORT", "$PORT"),  # braces are required
        ("${PORT", "${PORT"),
        ("${1X}", "${1X}"),
    ],
)
def test_env_references_in_strings(text, expanded):
    assert values.expand_env(text, ENV) == expanded


def test_env_references_are_expanded_all_the_way_down_and_only_in_strings():
    document = {"a": ["${PORT}", {"b": "x${UNSET:-y}"}], "${PORT}": 3, "c": True, "d": 1.5}
    assert values.expand_env(document, ENV) == {"a": ["2525", {"b": "xy"}], "${PORT}": 3, "c": True, "d": 1.5}


def test_env_references_read_the_process_environment_by_default(monkeypatch):
    monkeypatch.setenv("PREFORK_TCP_TEST_VALUE", "here")
    assert values.expand_env("${PREFORK_TCP_TEST_VALUE}") == "here"


# -- printing values as TOML ------------------------------------------------------------------

TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)
TOML_VALUES = st.recursive(
    st.booleans() | st.integers(-(1 << 63), (1 << 63) - 1) | st.floats(allow_nan=False) | TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=15,
)


@given(TEXT)
def test_toml_strings_read_back(text):
    assert tomllib.loads(f"k = {values.toml_string(text)}")["k"] == text


@given(TEXT)
def test_toml_keys_read_back_bare_when_they_can(key):
    written = values.toml_key(key)
    assert tomllib.loads(f"{written} = 1") == {key: 1}
    assert (written == key) == (key != "" and all(c.isascii() and (c.isalnum() or c in "_-") for c in key))


@given(TOML_VALUES)
def test_shown_values_read_back(value):
    assert tomllib.loads(f"k = {values.show(value)}")["k"] == value


def test_show_cuts_deep_tables_and_brief_cuts_long_text():
    assert values.show({"a": [1, {"b c": True}], "d": "e"}, depth=1) == '{a = [...], d = "e"}'
    assert values.show([[[1]]], depth=0) == "[...]" and values.show([[[1]]]) == "[[[1]]]"
    assert values.show(False) == "false" and values.show("\x7f") == '"\\u007f"'
    assert values.brief("x" * 10) == '"xxxxxxxxxx"'
    long = values.brief("x" * 200)
    assert len(long) == 80 and long.endswith("...") and long.startswith('"xxx')
    assert values.brief([[[[["deep"]]]]]) == "[[[[...]]]]"
