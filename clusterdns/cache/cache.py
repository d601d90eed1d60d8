"""ResponseCache: upstream answers kept as bytes, served by patching ID, TTLs and case.

Follows CoreDNS's cache plugin (operators.md 1.5) and perf-anchors §6 item 6:

* key: question name lowercased + type + class + the DO and CD bits;
* positive answers live for their smallest TTL, clamped to [min_ttl, max_ttl];
  NXDOMAIN and NODATA for min(SOA TTL, SOA MINIMUM) clamped to
  [min_negative_ttl, max_negative_ttl] (RFC 2308 5; without an SOA they are not cached,
  RFC 2308 5 again); upstream SERVFAIL for `servfail_ttl`; TC and malformed answers never;
* an entry is the answer's bytes (OPT removed), its expiry and the offsets of its TTL
  fields, found once at insert; a hit copies the bytes, patches the ID, writes the
  remaining TTL, and copies the client's question bytes in (0x20 case echo);
* a hit is looked up by the parser's key (`Query.key`): `lookup` renders any query's
  reply; `hot` serves the listeners' plain lane from the entry's pre-patched pieces
  (`Entry.patch`, once a second). Either way the hit is counted on the cache and the
  entry (prefetch, metrics) and returned, typed (`Hit`, or the `Entry`);
* bounded by entries, in two parts as CoreDNS's `success` and `denial` caches: positive
  answers in one LRU of `max_entries`, NXDOMAIN/NODATA/SERVFAIL in another of
  `max_denial_entries`, so a flood of never-repeated names (random subdomains, ndots
  search-path junk) evicts only denials and never the answers pods need; a key lives in
  one part at most. Eviction is LRU on an OrderedDict, O(1), so a full cache costs the
  same as an empty one (dnsmasq drops 250x when full, perf-anchors TL;DR). A hit looks
  in the success part first, so a positive hit costs one dict get;
* an upstream answer is scanned once per miss: the forwarder's Scan (it checks every
  record) is what the cache stores from; raw bytes (a coroutine `fetch`) are scanned here;
* single flight: concurrent misses for one key share one upstream query; a miss is a
  plain Future resolved by callbacks (`miss`), so it costs no Task or coroutine when the
  fetch is given as `start` (a callback-style fetch, ForwardZone's); a caller that gives
  `notify` (the UDP listener) gets its reply through that callback instead, no Future;
* prefetch: an entry asked `prefetch` times is refreshed in the background when less
  than `prefetch_percentage` of its TTL is left;
* serve-stale (RFC 8767): when the upstreams fail (error, timeout, SERVFAIL, REFUSED), an
  expired entry up to `serve_stale` seconds old is served with TTL `stale_ttl`; a slow
  upstream gets `stale_answer_timeout` before the stale answer goes out (RFC 8767 5,
  client response timer) while the refresh goes on; a failed refresh is not retried for
  `stale_recheck` seconds; a stale NXDOMAIN is never served once a positive answer for
  the name has been stored after it (coredns#3586).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from typing import Any, NamedTuple

from clusterdns.cache.entry import NODATA, NXDOMAIN, POSITIVE, SERVFAIL, UNCACHED, Entry
from clusterdns.wire import scan as W
from clusterdns.wire.constants import HEADER, Rcode
from clusterdns.wire.names import Malformed
from clusterdns.wire.question import Query

log = logging.getLogger("clusterdns.cache")
# plain ints for the per-answer classification (an IntEnum member costs ~0.2 us a read)
_NOERROR, _NXDOMAIN, _SERVFAIL = int(Rcode.NOERROR), int(Rcode.NXDOMAIN), int(Rcode.SERVFAIL)

#: an upstream answer: its bytes, or the forwarder's scan of them (then not scanned again)
Answer = bytes | W.Scan
Fetch = Callable[[Query], Coroutine[Any, Any, Answer]]
#: reports a fetch's end: (answer, None) or (None, exception)
Done = Callable[[Answer | None, BaseException | None], None]
#: a fetch without a coroutine: start it and call Done later (may raise at once)
Start = Callable[[Query, Done], None]
#: takes a miss's reply when it comes (`ResponseCache.miss` with `notify`)
Notify = Callable[[bytes], None]


class Declined(Exception):
    """The fetch turned the question down without asking anyone (the forwarder's
    `max_concurrent` cap): the client gets REFUSED, not a stale answer, and nothing is logged.
    Defined here so the cache needs nothing of the forwarding code above it."""


class Later:
    """The type of `LATER`."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "LATER"


#: what `miss` returns when the reply will go to its `notify` callback
LATER = Later()


class _Lru(OrderedDict):
    """One part of the cache (success or denial): an LRU of entries on an OrderedDict
    (O(1) eviction of the least recently used, and `get` + `move_to_end` are C calls,
    cheap enough for the listeners' hit lane) that counts its evictions. `get` does not
    refresh recency; a hit does (`ResponseCache.hot`, `lookup`). Also keeps when each
    name last had a positive answer (`ResponseCache._positive`)."""

    def __init__(self, maxsize: int) -> None:
        super().__init__()
        self.maxsize = maxsize
        self.evictions = 0  # coredns_cache_evictions_total{type=<this part>}

    def put(self, key: bytes, value: Entry | float) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.maxsize:
            self.popitem(last=False)
            self.evictions += 1


class Hit(NamedTuple):
    """A cache hit: the client's reply and the entry it came from (counted already)."""

    reply: bytes
    entry: Entry


class _Waiter:
    """A client waiting on a flight: its question, size limit, where its reply goes (a
    future, or a plain callback: the UDP listener's, which saves the Future, its
    done-callback and the loop turn that runs it on every miss) and (with a stale entry
    to fall back on) the RFC 8767 client response timer."""

    __slots__ = ("fut", "limit", "notify", "q", "reply", "timer")

    def __init__(self, q: Query, limit: int | None, fut: asyncio.Future[bytes] | None) -> None:
        self.q, self.limit, self.fut = q, limit, fut
        self.notify: Notify | None = None  # set once `miss` has returned
        self.timer: asyncio.TimerHandle | None = None
        self.reply: bytes | None = None  # set once answered

    def waiting(self) -> bool:
        """Not answered yet, and (a future) the asker has not given up."""
        return self.reply is None and (self.fut is None or not self.fut.done())

    def settle(self, reply: bytes) -> None:
        """Hand `reply` over (to the future, the callback, or kept for `miss` to return)."""
        self.reply = reply
        if self.fut is not None:
            self.fut.set_result(reply)
        elif self.notify is not None:
            self.notify(reply)


class _Flight:
    """The one upstream fetch for a key and the clients waiting on it."""

    __slots__ = ("cache", "q", "waiters")

    def __init__(self, cache: ResponseCache, q: Query) -> None:
        self.cache, self.q = cache, q
        self.waiters: list[_Waiter] = []

    def __call__(self, wire: Answer | None, exc: BaseException | None) -> None:
        self.cache._landed(self, wire, exc)

    def task_done(self, task: asyncio.Task[Answer]) -> None:
        self.cache._background.discard(task)
        if task.cancelled():
            self(None, asyncio.CancelledError())
        elif task.exception() is not None:
            self(None, task.exception())
        else:
            self(task.result(), None)


class ResponseCache:
    """Cache + single flight + prefetch + serve-stale in front of a fetch: the coroutine
    function `fetch`, or the callback-style `start` when set (no Task per miss).

    Every tuning value is required: they come from the settings' `cache` section
    (cache/settings.py `cache_kwargs`), the one place their defaults live."""

    def __init__(
        self,
        fetch: Fetch,
        *,
        max_entries: int,
        max_denial_entries: int,
        max_ttl: int,
        min_ttl: int,
        max_negative_ttl: int,
        min_negative_ttl: int,
        servfail_ttl: int,
        prefetch: int,
        prefetch_percentage: int,
        serve_stale: float,
        stale_ttl: int,
        stale_answer_timeout: float,
        stale_recheck: float,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_ttl, self.min_ttl = max_ttl, min(min_ttl, max_ttl)
        self.max_negative_ttl = max_negative_ttl
        self.min_negative_ttl = min(min_negative_ttl, max_negative_ttl)
        self.servfail_ttl = servfail_ttl
        self.prefetch, self.prefetch_percentage = prefetch, prefetch_percentage
        self.serve_stale, self.stale_ttl = serve_stale, stale_ttl
        self.stale_answer_timeout, self.stale_recheck = stale_answer_timeout, stale_recheck
        self.fetch = fetch
        # when set (ForwardZone sets it), misses use this callback-style fetch: no Task
        self.start: Start | None = None
        self.timer = timer
        self._entries: _Lru = _Lru(max_entries)  # the success part: positive answers
        self._denials: _Lru = _Lru(max_denial_entries)  # NXDOMAIN, NODATA, SERVFAIL
        # name -> when a positive answer for it was last stored (stale-NXDOMAIN rule; kept
        # only while serve-stale is on, the only reader)
        # (an OrderedDict LRU: cachetools' LRUCache, in Python, cost ~3% of a miss flood)
        self._positive: _Lru = _Lru(max_entries)
        self._flights: dict[bytes, _Flight] = {}
        self._background: set[asyncio.Task[Answer]] = set()
        self.hits = self.misses = self.prefetches = self.stale = 0
        self.denial_hits = 0  # the NXDOMAIN/NODATA/SERVFAIL share of `hits`
        self.coalesced = self.inserts = 0

    @property
    def evictions(self) -> int:
        return self._entries.evictions + self._denials.evictions

    def __len__(self) -> int:
        return len(self._entries) + len(self._denials)

    @property
    def sizes(self) -> dict[str, int]:
        """Entries per part (coredns_cache_entries{type}), without walking them."""
        return {"success": len(self._entries), "denial": len(self._denials)}

    def _get(self, key: bytes) -> Entry | None:
        """The entry for `key` in either part, fresh or not (recency untouched)."""
        e = self._entries.get(key)
        return self._denials.get(key) if e is None else e

    # -- the fast path: synchronous, no task ------------------------------------------------

    def lookup(self, q: Query, limit: int | None) -> Hit | None:
        """The client's reply from a fresh entry, counted, with the entry; or None (then
        call `miss`). Any query shape: the reply is rendered for `q` and cut to `limit`."""
        key = q.key
        entries = self._entries
        e = entries.get(key)
        if e is None:
            entries = self._denials
            e = entries.get(key)
            if e is None:
                return None
        left = e.remaining(self.timer())
        if left <= 0:
            return None
        entries.move_to_end(key)
        self.hits += 1
        e.hits += 1
        if e.kind != POSITIVE:
            self.denial_hits += 1
        if self.prefetch and e.hits >= self.prefetch and left <= max(1, e.ttl * self.prefetch_percentage // 100):
            self._prefetch(q)
        return Hit(W.render(e.wire, e.qend, e.ttl_offsets, left, q, limit), e)

    def hot(self, key: bytes) -> Entry | None:
        """The listeners' plain lane: the fresh entry for `key` (the parser's cache key,
        `Query.key`), counted, its `heads` and `tail` rendered for this second; None when
        the general path must decide (no fresh entry, or a prefetch is due: it needs the
        query). The caller writes the reply: ID + head + its question + tail (+ OPT).

        A positive entry whose pieces are right until `Entry.until` costs one dict get
        and one clock read; recency is refreshed when they are rendered again (once a
        second per entry, so the LRU order is kept to the second)."""
        e = self._entries.get(key)
        if e is not None and self.timer() < e.until:
            self.hits += 1
            e.hits += 1
            return e
        return self._hot_render(key, e)

    def _hot_render(self, key: bytes, e: Entry | None) -> Entry | None:
        """`hot` for a denial, an entry whose TTL second has turned, or one due for prefetch."""
        entries = self._entries
        if e is None:  # only a positive miss pays for the denial part
            entries = self._denials
            e = entries.get(key)
            if e is None:
                return None
        now = self.timer()
        elapsed = int(now - e.stored)
        left = e.ttl - elapsed
        if left <= 0:
            return None
        due = self.prefetch and left <= max(1, e.ttl * self.prefetch_percentage // 100)
        if due and e.hits + 1 >= self.prefetch:
            return None  # `lookup` starts the refresh
        entries.move_to_end(key)
        self.hits += 1
        e.hits += 1
        if e.kind != POSITIVE:
            self.denial_hits += 1
        if e.tail_ttl != left:
            e.patch(left)
        # the same pieces serve until the TTL's second turns; an entry near its prefetch
        # point is checked on every hit
        e.until = 0.0 if due or e.kind != POSITIVE else e.stored + elapsed + 1
        return e

    @property
    def evictions_by_type(self) -> dict[str, int]:
        return {"success": self._entries.evictions, "denial": self._denials.evictions}

    # -- the full path -----------------------------------------------------------------------

    async def resolve(self, q: Query, limit: int | None) -> bytes:
        """Answer from cache, or fetch (one flight per key), or serve stale on failure."""
        hit = self.lookup(q, limit)
        if hit is not None:
            return hit.reply
        reply = self.miss(q, limit)
        return reply if isinstance(reply, bytes) else await reply  # type: ignore[misc]  # no notify: never LATER

    def miss(self, q: Query, limit: int | None, notify: Notify | None = None) -> bytes | asyncio.Future[bytes] | Later:
        """After `lookup` found nothing fresh: the reply now (stale, during a recheck
        pause, or a fetch that failed at once) or a Future of it; with `notify`, LATER
        instead of a Future, and `notify(reply)` is called once, never before this
        returns. The Future or `notify` always gets a reply, never an exception: the
        answer, REFUSED on overload, a stale answer, or SERVFAIL."""
        self.misses += 1
        key = q.key
        stale = self._stale_candidate(key) if self.serve_stale else None
        if stale is not None and self.timer() < stale.retry_after:
            return self._serve_stale(stale, q, limit)  # upstream failed just now: don't hammer
        w = _Waiter(q, limit, None if notify is not None else asyncio.get_running_loop().create_future())
        if stale is not None:  # a slow upstream gets stale_answer_timeout (RFC 8767 5)
            w.timer = asyncio.get_running_loop().call_later(self.stale_answer_timeout, self._stale_timeout, w, stale)
        f = self._flights.get(key)
        if f is not None:
            self.coalesced += 1
            f.waiters.append(w)
        else:
            f = _Flight(self, q)
            f.waiters.append(w)
            self._launch(f)
        if w.fut is not None:
            return w.fut
        if w.reply is not None:
            return w.reply  # the fetch failed at once (overload, loop probe): no callback
        w.notify = notify
        return LATER

    def _stale_timeout(self, w: _Waiter, stale: Entry) -> None:
        w.timer = None
        if w.waiting():
            w.settle(self._serve_stale(stale, w.q, w.limit))

    def _launch(self, f: _Flight) -> None:
        """Register the flight, then start its fetch (which may even report at once)."""
        self._flights[f.q.key] = f
        if self.start is not None:
            try:
                self.start(f.q, f)
            except Exception as exc:  # noqa: BLE001 - Overloaded, Guarded, a loop probe: fails the flight
                f(None, exc)
            return
        task: asyncio.Task[Answer] = asyncio.get_running_loop().create_task(self.fetch(f.q))
        self._background.add(task)
        task.add_done_callback(f.task_done)

    def _landed(self, f: _Flight, wire: Answer | None, exc: BaseException | None) -> None:
        """The fetch ended: store what came back and answer every waiting client."""
        key = f.q.key
        if self._flights.get(key) is f:
            del self._flights[key]
        entry = None
        if exc is None:
            try:
                entry = self._store(wire, f.q)  # type: ignore[arg-type]  # exc is None: wire is the answer
            except Exception as err:
                log.exception("internal error storing the answer for %s", f.q.text)
                exc = err
        else:
            self._failed(key)
            if not isinstance(exc, Declined):
                log.debug("fetch %s failed: %r", f.q.text, exc)
        for w in f.waiters:
            if w.timer is not None:
                w.timer.cancel()
                w.timer = None
            if not w.waiting():
                continue  # served stale already, or the asker gave up
            try:
                reply = self._reply(w.q, w.limit, entry, exc)
            except Exception:  # a bug must cost one answer, never the others
                log.exception("internal error answering %s", w.q.text)
                reply = W.error_reply(w.q, Rcode.SERVFAIL)
            try:
                w.settle(reply)
            except Exception:  # the asker's callback failed: its answer only
                log.exception("internal error delivering the answer for %s", w.q.text)

    def _reply(self, q: Query, limit: int | None, entry: Entry | None, exc: BaseException | None) -> bytes:
        """A waiting client's reply from its flight's outcome."""
        if isinstance(exc, Declined):
            return W.error_reply(q, Rcode.REFUSED)
        if entry is None or entry.kind == SERVFAIL or entry.wire[3] & 0x0F == Rcode.REFUSED:
            stale = self._stale_candidate(q.key)
            if stale is not None:
                return self._serve_stale(stale, q, limit)
            if entry is None:
                return W.error_reply(q, Rcode.SERVFAIL)
        ttl = entry.remaining(self.timer()) if entry.kind != UNCACHED else None
        return W.render(entry.wire, entry.qend, entry.ttl_offsets, ttl, q, limit)

    def _prefetch(self, q: Query) -> None:
        if q.key not in self._flights:
            self.prefetches += 1
            self._launch(_Flight(self, q))

    def _store(self, wire: Answer, q: Query) -> Entry:
        """Classify an upstream answer (bytes, or the forwarder's Scan of them) and keep it
        (or not) in its part, dropping the key from the other; the entry to answer from."""
        entry = self._entry(wire, q)
        if entry.kind == UNCACHED:
            return entry
        key = q.key
        old = self._get(key)
        if (
            entry.kind == SERVFAIL
            and old is not None
            and old.kind != SERVFAIL
            and (old.remaining(entry.stored) > 0 or self._stale_ok(old, entry.stored))
        ):
            # a failed refresh (prefetch, or with serve-stale on) keeps the good answer
            self._failed(key)
            return entry
        if old is not None:
            entry.hits = old.hits  # popularity carries over, so prefetch keeps going
        if entry.kind == POSITIVE:
            part, other = self._entries, self._denials
        else:
            part, other = self._denials, self._entries
        if old is not None:
            other.pop(key, None)  # a key lives in one part only
        part.put(key, entry)
        self.inserts += 1
        if entry.kind == POSITIVE and self.serve_stale:
            self._positive.put(entry.name, entry.stored)
        return entry

    def _failed(self, key: bytes) -> None:
        old = self._get(key)
        if old is not None:
            old.retry_after = self.timer() + self.stale_recheck

    def _entry(self, wire: Answer, q: Query) -> Entry:
        """Classify an upstream answer and decide how long it may be kept."""
        now = self.timer()
        try:
            s = wire if isinstance(wire, W.Scan) else W.scan_response(wire)
        except Malformed as exc:
            log.debug("uncacheable answer for %s: %s", q.text, exc)
            bad = W.error_reply(
                Query(0, True, False, q.qwire.lower(), q.name, q.qtype, q.qclass, False, 0, False), Rcode.SERVFAIL
            )
            return Entry(bad, HEADER + len(q.qwire), (), UNCACHED, q.name, now, 0)
        kind, ttl = UNCACHED, 0
        if s.tc:
            pass  # RFC 2181 9: a truncated answer is not cached
        elif s.rcode == _NOERROR and s.ancount:
            kind = POSITIVE
            ttl = min(max(s.min_ttl or 0, self.min_ttl), self.max_ttl)
        elif s.rcode in (_NOERROR, _NXDOMAIN) and s.negative_ttl is not None:
            kind = NXDOMAIN if s.rcode == _NXDOMAIN else NODATA
            neg = s.negative_ttl if s.answer_min_ttl is None else min(s.negative_ttl, s.answer_min_ttl)
            ttl = min(max(neg, self.min_negative_ttl), self.max_negative_ttl)
        elif s.rcode == _SERVFAIL and self.servfail_ttl > 0:
            kind, ttl = SERVFAIL, self.servfail_ttl
        return Entry(s.wire, s.qend, s.ttl_offsets, kind, q.name, now, ttl)

    # -- serve-stale ---------------------------------------------------------------------

    def _stale_ok(self, e: Entry, now: float) -> bool:
        if not self.serve_stale or e.kind in (SERVFAIL, UNCACHED):
            return False
        if now >= e.expires + self.serve_stale:
            return False
        if e.kind == NXDOMAIN:
            # never pin a negative once the name has had a positive answer (coredns#3586)
            seen = self._positive.get(e.name)
            if seen is not None and seen >= e.stored:
                return False
        return True

    def _stale_candidate(self, key: bytes) -> Entry | None:
        e = self._get(key)
        if e is None or not self._stale_ok(e, self.timer()):
            return None
        return e

    def _serve_stale(self, e: Entry, q: Query, limit: int | None) -> bytes:
        self.stale += 1
        return W.render(e.wire, e.qend, e.ttl_offsets, self.stale_ttl, q, limit)

    def close(self) -> None:
        """Cancel background refreshes."""
        for t in list(self._background):
            t.cancel()
