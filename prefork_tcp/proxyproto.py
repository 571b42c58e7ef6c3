"""The PROXY protocol header (HAProxy's proxy-protocol.txt, versions 1 and 2), sans IO.

A load balancer that speaks it opens each connection with one header naming the client
it accepted the connection from.  ``parse(data, mode)`` reads that header from the
bytes received so far: it returns ``None`` while they are a valid beginning of a header,
the ``Header`` and its length once it is whole, and raises ``ProxyError`` as soon as
they cannot be one.

- **Version 1** is one text line: ``PROXY TCP4 <src> <dst> <sport> <dport>\\r\\n`` (or
  ``TCP6``), or ``PROXY UNKNOWN ...\\r\\n``; at most 107 bytes with its CRLF.
- **Version 2** is binary: a 12-byte signature, a version and command byte (``LOCAL``
  for the balancer's own health checks, ``PROXY``), a family byte, a 16-bit length and
  that many bytes: the addresses (IPv4, IPv6 or unix paths), then TLVs, which are
  skipped.  UDP families are refused: this is a stream server.

``mode`` is ``"v1"``, ``"v2"`` or ``"auto"`` (either, told apart by the first bytes).
"""

from __future__ import annotations

import ipaddress
import struct
from typing import NamedTuple

V1_PREFIX = b"PROXY "
#: The longest version 1 header, CRLF included (the specification's own bound).
V1_MAX = 107
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
_V2_FIXED = 16
#: The longest version 2 header: the fixed part and a 16-bit length.
V2_MAX = _V2_FIXED + 0xFFFF
MODES = ("v1", "v2", "auto")

_V2_FAMILIES = {0x11: ("TCP4", 12), 0x21: ("TCP6", 36), 0x31: ("UNIX", 216), 0x00: ("UNKNOWN", 0)}


class ProxyError(ValueError):
    """The bytes are not a PROXY header (the reason is the message)."""


class Header(NamedTuple):
    """What a header says: ``source`` is the client's address as RoadRunner writes a peer
    (``ip:port``, ``[v6]:port``, a unix path), or "" when the header names none (``LOCAL``
    and ``UNKNOWN``: the connection is the balancer's own)."""

    version: int
    family: str
    source: str = ""
    destination: str = ""


def parse(data: bytes, mode: str = "auto") -> tuple[Header, int] | None:
    """Return the header at the start of ``data`` and its length in bytes, or None when
    ``data`` is a valid beginning of one; raise ``ProxyError`` when it cannot be one."""
    if mode == "v1" or (mode == "auto" and data[:1] == b"P"):
        return _parse_v1(data)
    if mode == "v2" or (mode == "auto" and data[:1] == b"\r"):
        return _parse_v2(data)
    if mode != "auto":
        raise ValueError(f"mode is one of {MODES}, not {mode!r}")
    if not data:
        return None
    raise ProxyError("no PROXY header (neither version 1 nor version 2)")


def _parse_v1(data: bytes) -> tuple[Header, int] | None:
    head = data[: len(V1_PREFIX)]
    if head != V1_PREFIX[: len(head)]:
        raise ProxyError("not a version 1 header (it starts with 'PROXY ')")
    end = data.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if len(data) >= V1_MAX or b"\n" in data[: V1_MAX - 1] or (b"\r" in data[:-1][: V1_MAX - 2]):
            raise ProxyError(f"a version 1 header ends with CRLF within {V1_MAX} bytes")
        return None
    try:
        line = data[:end].decode("ascii")
    except UnicodeDecodeError:
        raise ProxyError("a version 1 header is ASCII") from None
    fields = line.split(" ")
    family = fields[1] if len(fields) > 1 else ""
    if family == "UNKNOWN":
        return Header(1, "UNKNOWN"), end + 2
    if family not in ("TCP4", "TCP6") or len(fields) != 6:
        raise ProxyError("a version 1 header is PROXY TCP4|TCP6 <src> <dst> <sport> <dport>, or PROXY UNKNOWN")
    version = 4 if family == "TCP4" else 6
    source = _v1_address(fields[2], version)
    destination = _v1_address(fields[3], version)
    sport, dport = _v1_port(fields[4]), _v1_port(fields[5])
    return Header(1, family, _peer(source, sport), _peer(destination, dport)), end + 2


def _v1_address(text: str, version: int) -> str:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise ProxyError(f"{text[:45]!r} is not an IPv{version} address") from None
    if address.version != version or "%" in text:
        raise ProxyError(f"{text[:45]!r} is not an IPv{version} address")
    return str(address)


def _v1_port(text: str) -> int:
    if not (text.isascii() and text.isdigit() and len(text) <= 5) or (len(text) > 1 and text[0] == "0") or int(text) > 65535:
        raise ProxyError(f"{text[:8]!r} is not a port")
    return int(text)


def _parse_v2(data: bytes) -> tuple[Header, int] | None:
    head = data[: len(V2_SIGNATURE)]
    if head != V2_SIGNATURE[: len(head)]:
        raise ProxyError("not a version 2 header (its signature is wrong)")
    if len(data) < _V2_FIXED:
        if len(data) > 12 and data[12] >> 4 != 2:
            raise ProxyError(f"version 2 header of version {data[12] >> 4}")
        return None
    version_command, family_byte, length = data[12], data[13], struct.unpack_from("!H", data, 14)[0]
    if version_command >> 4 != 2:
        raise ProxyError(f"version 2 header of version {version_command >> 4}")
    command = version_command & 0x0F
    if command not in (0, 1):
        raise ProxyError(f"version 2 header with unknown command {command}")
    total = _V2_FIXED + length
    known = _V2_FAMILIES.get(family_byte)
    if command == 1 and known is None:
        raise ProxyError(f"version 2 header with an unsupported family 0x{family_byte:02x} (a stream server takes TCP or UNIX)")
    if command == 1 and known is not None and length < known[1]:
        raise ProxyError(f"version 2 header too short for its addresses ({length} bytes)")
    if len(data) < total:
        return None
    if command == 0:  # LOCAL: the balancer's own connection (a health check); addresses are ignored
        return Header(2, "LOCAL"), total
    family, _ = known  # type: ignore[misc]  # known is set for PROXY (checked above)
    body = data[_V2_FIXED:total]
    if family == "TCP4":
        src, dst, sport, dport = struct.unpack_from("!4s4sHH", body)
        return Header(2, family, _peer(str(ipaddress.IPv4Address(src)), sport), _peer(str(ipaddress.IPv4Address(dst)), dport)), total
    if family == "TCP6":
        src, dst, sport, dport = struct.unpack_from("!16s16sHH", body)
        return Header(2, family, _peer(str(ipaddress.IPv6Address(src)), sport), _peer(str(ipaddress.IPv6Address(dst)), dport)), total
    if family == "UNIX":
        return Header(2, family, _path(body[:108]), _path(body[108:216])), total
    return Header(2, "UNKNOWN"), total


def _path(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def _peer(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def allowed(peer: str, networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]) -> bool:
    """Whether a TCP peer (``ip:port`` or ``[v6]:port``) is in ``networks`` (an IPv4 peer
    seen on an IPv6 socket, ``::ffff:a.b.c.d``, counts as ``a.b.c.d``)."""
    host = peer.rpartition(":")[0].strip("[]")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    candidates = [address]
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        candidates.append(address.ipv4_mapped)
    return any(candidate in network for candidate in candidates for network in networks)
