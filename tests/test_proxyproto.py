"""The PROXY protocol parser on its own: every valid header, split anywhere, truncated
anywhere, and random bytes."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prefork_tcp.proxyproto import V1_MAX, V2_SIGNATURE, Header, ProxyError, parse

_ports = st.integers(0, 65535)
_v4 = st.builds(ipaddress.IPv4Address, st.integers(0, 2**32 - 1))
_v6 = st.builds(ipaddress.IPv6Address, st.integers(0, 2**128 - 1))


def _peer(address: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int) -> str:
    return f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"


@st.composite
def v1_headers(draw: st.DrawFn) -> tuple[bytes, Header]:
    if draw(st.booleans()):
        rest = draw(st.sampled_from([b"", b" ffff:f...f:ffff ffff:f...f:ffff 65535 65535"]))
        return b"PROXY UNKNOWN" + rest + b"\r\n", Header(1, "UNKNOWN")
    family, addresses = draw(st.sampled_from([("TCP4", _v4), ("TCP6", _v6)]))
    src, dst, sport, dport = draw(addresses), draw(addresses), draw(_ports), draw(_ports)
    line = f"PROXY {family} {src} {dst} {sport} {dport}\r\n".encode()
    return line, Header(1, family, _peer(src, sport), _peer(dst, dport))


def v2(command: int, family: int, body: bytes) -> bytes:
    return V2_SIGNATURE + bytes([0x20 | command, family]) + struct.pack("!H", len(body)) + body


@st.composite
def v2_headers(draw: st.DrawFn) -> tuple[bytes, Header]:
    pairs = draw(st.lists(st.tuples(st.integers(0, 255), st.binary(max_size=40)), max_size=3))
    tlvs = b"".join(bytes([kind]) + struct.pack("!H", len(value)) + value for kind, value in pairs)
    kind = draw(st.sampled_from(["TCP4", "TCP6", "UNIX", "LOCAL", "UNKNOWN"]))
    if kind == "LOCAL":
        return v2(0, draw(st.sampled_from([0x00, 0x11, 0x21])), draw(st.binary(max_size=40)) + tlvs), Header(2, "LOCAL")
    if kind == "UNKNOWN":
        return v2(1, 0x00, tlvs), Header(2, "UNKNOWN")
    if kind == "UNIX":
        src, dst = draw(st.text("abc/._-", min_size=1, max_size=107)), draw(st.text("abc/._-", min_size=1, max_size=107))
        body = src.encode().ljust(108, b"\0") + dst.encode().ljust(108, b"\0")
        return v2(1, 0x31, body + tlvs), Header(2, "UNIX", src, dst)
    addresses, family, fmt = (_v4, 0x11, "!4s4sHH") if kind == "TCP4" else (_v6, 0x21, "!16s16sHH")
    src, dst, sport, dport = draw(addresses), draw(addresses), draw(_ports), draw(_ports)
    body = struct.pack(fmt, src.packed, dst.packed, sport, dport)
    return v2(1, family, body + tlvs), Header(2, kind, _peer(src, sport), _peer(dst, dport))


_headers = v1_headers() | v2_headers()


@given(_headers, st.binary(max_size=30))
def test_a_valid_header_is_read_whole_and_what_follows_is_left(case, rest):
    raw, header = case
    for mode in ("auto", f"v{header.version}"):
        assert parse(raw + rest, mode) == (header, len(raw))


@given(_headers)
def test_every_truncation_of_a_valid_header_asks_for_more(case):
    raw, header = case
    for end in range(len(raw)):
        assert parse(raw[:end], "auto") is None
        assert parse(raw[:end], f"v{header.version}") is None


@given(_headers, st.data())
def test_a_header_split_anywhere_reads_the_same_as_whole(case, data):
    raw, header = case
    cuts = sorted(data.draw(st.lists(st.integers(0, len(raw)), max_size=6)))
    received = b""
    for cut in [*cuts, len(raw)]:
        received = raw[: max(cut, len(received))]
        result = parse(received, "auto")
        assert result == ((header, len(raw)) if len(received) == len(raw) else None)


@given(st.binary(max_size=300), st.sampled_from(["auto", "v1", "v2"]))
def test_random_bytes_are_a_header_more_bytes_or_a_proxy_error(data, mode):
    try:
        result = parse(data, mode)
    except ProxyError:
        return
    if result is not None:
        header, length = result
        assert 0 < length <= len(data) and header.version in (1, 2)


@given(_headers)
def test_a_header_of_the_other_version_is_refused(case):
    raw, header = case
    with pytest.raises(ProxyError):
        parse(raw, "v2" if header.version == 1 else "v1")


@pytest.mark.parametrize(
    "raw, why",
    [
        (b"GET / HTTP/1.1\r\n", "no PROXY header"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2" + b" " * 80 + b"\r\n", "within 107 bytes"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\n", "ends with CRLF"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rx", "ends with CRLF"),
        (b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", "TCP4|TCP6"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "TCP4|TCP6"),
        (b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n", "TCP4|TCP6"),
        (b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n", "not an IPv4 address"),
        (b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n", "not an IPv6 address"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", "not a port"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", "not a port"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 \xd9\xa1 2\r\n", "ASCII"),
        (V2_SIGNATURE + b"\x11\x11\x00\x0c" + bytes(12), "of version 1"),
        (V2_SIGNATURE + b"\x22\x11\x00\x0c" + bytes(12), "unknown command"),
        (V2_SIGNATURE + b"\x21\x12\x00\x0c" + bytes(12), "unsupported family 0x12"),  # UDP
        (V2_SIGNATURE + b"\x21\x21\x00\x0c" + bytes(12), "too short for its addresses"),
        (b"\r\n\r\n\x00\r\nQUIx", "signature is wrong"),
    ],
)
def test_malformed_headers_are_refused_with_a_reason(raw, why):
    with pytest.raises(ProxyError, match=why.replace("|", r"\|").replace("(", r"\(")):
        parse(raw, "auto")


def test_version_1_headers_may_take_107_bytes_and_no_more():
    longest = b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n"
    header, length = parse(longest, "v1")
    assert length == len(longest) and header.source == "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535"
    unknown = b"PROXY UNKNOWN " + b"x" * (V1_MAX - 16) + b"\r\n"
    assert len(unknown) == V1_MAX and parse(unknown, "v1") == (Header(1, "UNKNOWN"), V1_MAX)
    assert parse(unknown[:-2], "v1") is None
    with pytest.raises(ProxyError, match="within 107 bytes"):
        parse(unknown[:-2] + b"x\r\n", "v1")
