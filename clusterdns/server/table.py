"""The hot path: answers kept in wire form, keyed by the question's bytes.

A query that looks like a plain question (QDCOUNT 1, no answer/authority records,
optionally a bare OPT without options) is looked up by

    key = flags + counts + name.lower() + qtype/qclass [+ OPT]

and answered by patching in its ID and its own question bytes. Only the slow path
inserts keys, and only for questions it parsed, so a hit implies a well-formed query
(label-length bytes are below 64, out of reach of `bytes.lower()`). No dnslib here.

Entries are dropped precisely: each remembers the store dependency keys its answer
read (`kube.store` lists them), and a store change drops only those entries.

Each entry also holds its traffic class's counts (`obs.counters`): the listeners add
one per answer at their slot, the metrics read them at scrape time.
"""

from __future__ import annotations

from clusterdns.kube.store import ALL, DepKey
from clusterdns.obs.counters import QueryStats

NO_EDNS = b"\x00\x01\x00\x00\x00\x00\x00\x00"  # QD=1 AN=0 NS=0 AR=0
ONE_OPT = b"\x00\x01\x00\x00\x00\x00\x00\x01"  # ... AR=1
OPT_HEAD = b"\x00\x00\x29"  # root owner, type OPT
EMPTY_RDATA = b"\x00\x00"

Entry = tuple[bytes, bytes, list[int]]  # (flags + counts, everything after the question, class counts)


def question_bounds(data: bytes) -> int:
    """Where the question's name ends if `data` has the hot-path shape, else 0."""
    n = len(data)
    counts = data[4:12]
    if counts == NO_EDNS:
        return n - 4
    if counts == ONE_OPT and data[n - 11:n - 8] == OPT_HEAD and data[n - 2:] == EMPTY_RDATA:
        return n - 15
    return 0


def key_of(data: bytes, end: int) -> bytes:
    return data[2:12] + data[12:end].lower() + data[end:]


class AnswerTable:
    """Rendered answers for UDP and TCP (they differ in truncation), with invalidation."""

    def __init__(self, max_entries: int = 200_000, stats: QueryStats | None = None) -> None:
        self.max_entries = max_entries
        self.stats = stats if stats is not None else QueryStats()
        self.udp: dict[bytes, Entry] = {}
        self.tcp: dict[bytes, Entry] = {}
        # cached forwarded answers, replayable until `until` (their TTLs tick each second):
        # (flags + counts, rest, class counts, until, cache entry, cache)
        self.replay_udp: dict[bytes, tuple] = {}
        self.replay_tcp: dict[bytes, tuple] = {}
        self._by_dep: dict[DepKey, list[bytes]] = {}

    def lookup(self, data: bytes, tcp: bool) -> bytes | None:
        """The whole hot path in one place (the protocols inline the same steps)."""
        end = question_bounds(data)
        if end <= 12:
            return None
        entry = (self.tcp if tcp else self.udp).get(key_of(data, end))
        if entry is None:
            return None
        return data[:2] + entry[0] + data[12:end] + entry[1]

    def store(self, query: bytes, question_end: int, reply: bytes, deps: set[DepKey], tcp: bool) -> None:
        """Keep `reply` for replay if `query` has the hot-path shape."""
        end = question_bounds(query)
        if end + 4 != question_end or end <= 12:
            return  # trailing bytes, options or odd counts: always the slow path
        table = self.tcp if tcp else self.udp
        if len(self.udp) + len(self.tcp) >= self.max_entries:
            self.clear()  # O(1) amortised; junk names cannot grow memory without bound
        key = key_of(query, end)
        table[key] = (reply[2:12], reply[end:], self.stats.hot_class(query, reply, tcp))
        for dep in deps:
            self._by_dep.setdefault(dep, []).append(key)

    def store_replay(self, query: bytes, reply: bytes, hit: tuple, tcp: bool) -> None:
        """Keep a forward-cache hit for replay until its TTLs tick (`ResponseCache.replay_until`).

        The hot path then counts the hit on the cache and its entry itself, so hit counts,
        prefetch and metrics see every answer.
        """
        end = question_bounds(query)
        if end <= 12 or len(reply) <= end:
            return
        table = self.replay_tcp if tcp else self.replay_udp
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
        """A replayed forward-cache hit whose TTLs just ticked: the same reply with the TTLs
        counted down, kept for the next second; None when the slow path must decide (the
        entry expired or entered its prefetch window). Once per name and second instead of
        the whole slow path."""
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
        (self.replay_tcp if tcp else self.replay_udp)[key] = new
        return new

    def invalidate(self, changes: set[DepKey]) -> None:
        """Store listener: drop the answers that read what changed."""
        if ALL in changes:
            self.clear()
            return
        for dep in changes:
            for key in self._by_dep.pop(dep, ()):
                self.udp.pop(key, None)
                self.tcp.pop(key, None)

    def clear(self) -> None:
        self.udp.clear()
        self.tcp.clear()
        self.replay_udp.clear()
        self.replay_tcp.clear()
        self._by_dep.clear()

    def __len__(self) -> int:
        return len(self.udp) + len(self.tcp)
