"""Forward-cache hits replayed from the listeners until their TTLs tick.

A node-cache hit is the same bytes for one second (the TTLs count down once a second),
so the listeners keep the rendered reply keyed by the query's shape and answer repeats
without the cache's lookup; `retick` renews an entry in place when the second turns.
This is the forward cache's concern only: the cluster zone needs no table (its
answers are compiled, `cluster/zone.py`).

The key is the query's bytes 2-11 (flags and counts) + its name lowercased + type,
class and a bare OPT if any: only replies to plain questions are kept.
"""

from __future__ import annotations

from clusterdns.obs.counters import QueryStats

NO_EDNS = b"\x00\x01\x00\x00\x00\x00\x00\x00"  # QD=1 AN=0 NS=0 AR=0
ONE_OPT = b"\x00\x01\x00\x00\x00\x00\x00\x01"  # ... AR=1
OPT_HEAD = b"\x00\x00\x29"  # root owner, type OPT
EMPTY_RDATA = b"\x00\x00"


def question_bounds(data: bytes) -> int:
    """Where the question's name ends if `data` has the plain shape, else 0."""
    n = len(data)
    counts = data[4:12]
    if counts == NO_EDNS:
        return n - 4
    if counts == ONE_OPT and data[n - 11:n - 8] == OPT_HEAD and data[n - 2:] == EMPTY_RDATA:
        return n - 15
    return 0


def key_of(data: bytes, end: int) -> bytes:
    return data[2:12] + data[12:end].lower() + data[end:]


class ReplayTable:
    """Replayable forward-cache hits for UDP and TCP (they differ in truncation)."""

    def __init__(self, max_entries: int = 200_000, stats: QueryStats | None = None) -> None:
        self.max_entries = max_entries
        self.stats = stats if stats is not None else QueryStats()
        # (flags + counts, rest, class counts, until, cache entry, hit counter, ttl offsets, cache)
        self.udp: dict[bytes, tuple] = {}
        self.tcp: dict[bytes, tuple] = {}

    def store(self, query: bytes, reply: bytes, hit: tuple, tcp: bool) -> None:
        """Keep a forward-cache hit for replay until its TTLs tick (`ResponseCache.replay_until`).

        The listeners then count the hit on the cache and its entry themselves, so hit
        counts, prefetch and metrics see every answer.
        """
        end = question_bounds(query)
        if end <= 12 or len(reply) <= end:
            return
        table = self.tcp if tcp else self.udp
        if len(table) >= self.max_entries:
            table.clear()
        cache, entry, until = hit
        counts = self.stats.hot_class(query, reply, tcp, plugin="cache")
        # where the TTLs sit in the reply's tail, so `retick` can renew it without the slow
        # path; None when the reply is not the stored answer's shape (truncated: TC)
        base = entry.qend - 4  # the stored answer's offset of the tail (after the QNAME)
        offs: tuple[int, ...] | None = tuple(o - base for o in entry.ttl_offsets)
        if len(reply) - end < len(entry.wire) - base:
            offs = None
        table[key_of(query, end)] = (reply[2:12], reply[end:], counts, until, entry,
                                     cache.hit_counter(entry), offs, cache)

    def retick(self, key: bytes, hit: tuple, now: float, tcp: bool) -> tuple | None:
        """A replayed hit whose TTLs just ticked: the same reply with the TTLs counted down,
        kept for the next second; None when the slow path must decide (the entry expired
        or entered its prefetch window)."""
        head, tail, counts, _, entry, counter, offs, cache = hit
        left = entry.remaining(now)
        if offs is None or left <= 0:
            return None
        window = max(1, entry.ttl * cache.prefetch_percentage // 100)
        until = cache.replay_until(entry, now, window)
        if until <= now:
            return None
        buf = bytearray(tail)
        packed = left.to_bytes(4, "big")
        for o in offs:
            buf[o:o + 4] = packed
        new = (head, bytes(buf), counts, until, entry, counter, offs, cache)
        (self.tcp if tcp else self.udp)[key] = new
        return new

    def clear(self) -> None:
        self.udp.clear()
        self.tcp.clear()

    def __len__(self) -> int:
        return len(self.udp) + len(self.tcp)
