"""UUID4 text for new connections, without a system call per connection.

Random bytes are read from the kernel in blocks; a forked child starts with an empty
block, so no two processes ever hand out the same bytes.
"""

from __future__ import annotations

import os

try:
    import cython
except ImportError:  # plain Python without Cython installed
    from . import nocython as cython

if cython.compiled:
    from cython.cimports.prefork_tcp.cuuids import uuid_text

_BLOCK = 16 * 256
# The variant nibble of RFC 4122 is 10xx: map any hex digit onto 8, 9, a or b.
_VARIANT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}
_pool = b""
_pos = 0


def new_uuid() -> str:
    """Return a random (version 4) UUID as text, like ``str(uuid.uuid4())``."""
    global _pool, _pos
    if _pos >= len(_pool):
        _pool, _pos = os.urandom(_BLOCK), 0
    pos = _pos
    _pos = pos + 16
    if cython.compiled:  # written out in C (cuuids.pxd)
        return uuid_text(_pool, pos)
    else:
        h = _pool[pos : pos + 16].hex()
        return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:]}"


def _forget_pool() -> None:
    global _pool, _pos
    _pool, _pos = b"", 0


os.register_at_fork(after_in_child=_forget_pool)
