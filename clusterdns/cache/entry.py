"""What the cache stores: an answer's bytes with what serving it again needs (expiry,
TTL offsets), and its kind (positive, NXDOMAIN, NODATA, SERVFAIL, uncached).
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
    stored: float
    ttl: int  # TTL served at `stored`; counts down from there
    hits: int = 0
    retry_after: float = 0.0  # serve-stale: no refresh before this (failure recheck)

    @property
    def expires(self) -> float:
        return self.stored + self.ttl

    def remaining(self, now: float) -> int:
        return self.ttl - int(now - self.stored)
