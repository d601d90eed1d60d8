"""What the cache stores: an answer's bytes with what serving it again needs (expiry,
TTL offsets), and its kind (positive, NXDOMAIN, NODATA, SERVFAIL, uncached).

An entry also keeps its reply in pieces for the listeners' plain lane (`patch`): the
header flags and counts for each RD/EDNS variant and the sections after the question
with the TTLs of the current second, so a hit is `ID + head + the client's question +
tail (+ OPT)`, the TTLs counted down from the entry's stored time.
"""

from __future__ import annotations

from dataclasses import dataclass

POSITIVE, NXDOMAIN, NODATA, SERVFAIL, UNCACHED = range(5)


@dataclass(slots=True)
class Entry:
    """A stored answer. `wire` has no OPT record and its question lowercased."""

    wire: bytes
    qend: int
    ttl_offsets: tuple[int, ...]
    kind: int
    name: bytes
    stored: float  # the cache clock's time at insert, sub-second (monotonic)
    ttl: int  # TTL served at `stored`; counts down from there
    hits: int = 0
    retry_after: float = 0.0  # serve-stale: no refresh before this (failure recheck)
    # the plain lane's pieces (`patch`): bytes 2-11 by (EDNS << 1 | RD), the tail after the
    # question with TTL `tail_ttl` written in (-1: not rendered yet)
    heads: tuple[bytes, ...] = ()
    tail: bytes = b""
    tail_ttl: int = -1
    until: float = 0.0  # the pieces are right (and the entry fresh) until then: `ResponseCache.hot`
    classes: list | None = None  # traffic classes by (x << 1 | tcp), for metrics

    @property
    def expires(self) -> float:
        return self.stored + self.ttl

    def remaining(self, now: float) -> int:
        """The TTL to serve at `now`: whole seconds elapsed since `stored` (sub-second
        precise) taken off, so an entry of 30 read 7.5 s later says 23."""
        return self.ttl - int(now - self.stored)

    def patch(self, left: int) -> None:
        """Render the plain lane's pieces for remaining TTL `left` (once per second per entry)."""
        wire, qend = self.wire, self.qend
        if not self.heads:
            self.heads = heads(wire[2:12])
        buf = bytearray(wire[qend:])
        packed = max(0, left).to_bytes(4, "big")
        for off in self.ttl_offsets:
            o = off - qend
            buf[o : o + 4] = packed
        self.tail = bytes(buf)
        self.tail_ttl = left


_HEADS: dict[bytes, tuple[bytes, ...]] = {}
_HEADS_MAX = 4096  # distinct answer shapes kept (a few dozen in practice; bounded against odd upstreams)


def heads(flags_counts: bytes) -> tuple[bytes, ...]:
    """The four header variants (RD, EDNS) of an answer's flags and counts (bytes 2-11),
    shared by every entry of that shape: 20,000 entries would otherwise hold 80,000
    little bytes objects (~5 MB)."""
    found = _HEADS.get(flags_counts)
    if found is None:
        flags = flags_counts[0] & 0xFE
        b3 = flags_counts[1] | 0x80  # RA: we recurse on the client's behalf
        counts = flags_counts[2:8]
        ar = (flags_counts[8] << 8) | flags_counts[9]
        found = tuple(
            bytes((flags | rd, b3)) + counts + (ar + edns).to_bytes(2, "big") for edns in (0, 1) for rd in (0, 1)
        )
        if len(_HEADS) < _HEADS_MAX:
            _HEADS[flags_counts] = found
    return found
