"""New ids: time-ordered UUIDs (version 7, RFC 9562) in their canonical text form.

Every order, shipment, invoice, journal entry and event takes one or more, and each is a key in several B-tree
indexes (its primary key, the inbox of every consumer of its event, the foreign keys that point at it). A random
(version 4) id lands each of those inserts on a random leaf page: once a table outgrows shared buffers, nearly
every insert reads a page in from the OS and evicts another, and every checkpoint makes the next write of each page
log the whole page. A version-7 id starts with its creation time in milliseconds (then a 12-bit fraction of the
millisecond), so new keys go to the rightmost leaves, which stay in memory (and PostgreSQL's B-tree often appends
to the rightmost leaf it remembers, without descending from the root). The remaining 62 bits are cryptographically
random, read 4 KiB at a time (`uuid.uuid4()` makes a system call for each id), so ids stay unguessable; what an id
tells is when it was made, which the resource's own timestamps tell anyway. A forked child reads its own random
bytes.
"""

from __future__ import annotations

import os
import threading
import time
import uuid

_CHUNK = 4096
_RANDOM = 8  # bytes of entropy an id takes (62 of their bits are kept)
_lock = threading.Lock()
_raw = b""  # entropy read ahead
_used = 0  # how many bytes of it ids have taken

# the variant's hex digit (the first of the 4th group) from a random one: its two high bits are 10, so 8, 9, a or b
_VARIANT = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}


def _reset() -> None:
    global _raw, _used
    _raw, _used = b"", 0


os.register_at_fork(after_in_child=_reset)


def new_id() -> str:
    """A version-7 UUID as 36 characters of lower-case hex and dashes: 48 bits of Unix milliseconds, the version,
    12 bits of the fraction of that millisecond, the variant, 62 random bits."""
    global _raw, _used
    now = time.time_ns()
    with _lock:
        if _used >= len(_raw):
            _raw, _used = os.urandom(_CHUNK), 0
        r = _raw[_used : _used + _RANDOM].hex()
        _used += _RANDOM
    ms = f"{now // 1_000_000:012x}"
    fraction = (now % 1_000_000) * 4096 // 1_000_000
    return f"{ms[:8]}-{ms[8:]}-7{fraction:03x}-{_VARIANT[r[0]]}{r[1:4]}-{r[4:]}"


def new_uuid() -> uuid.UUID:
    """`new_id()` as a `uuid.UUID`, for code that keeps ids as such (the ledger's entries)."""
    return uuid.UUID(new_id())
