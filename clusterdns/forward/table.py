"""Forward zones (stub domains and '.'): which forwarder, behind which cache, a name
outside the authoritative zones goes to.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from clusterdns.cache.cache import ResponseCache
from clusterdns.forward.forwarder import (
    Forwarder,
    ForwardError,
    Guarded,
    Overloaded,
    ScanDone,
)
from clusterdns.forward.loop import LoopDetector
from clusterdns.forward.sources import _zone
from clusterdns.forward.upstream import UpstreamSpec
from clusterdns.wire import scan as W
from clusterdns.wire.constants import Rcode
from clusterdns.wire.names import to_wire
from clusterdns.wire.question import Query


class ForwardZone:
    """One forward zone: names under `zone` go to `forwarder`, through `cache` if given."""

    def __init__(
        self, zone: str, forwarder: Forwarder, cache_opts: Mapping[str, Any] | None, loop: LoopDetector | None = None
    ) -> None:
        self.zone = _zone(zone)
        self.forwarder = forwarder
        self.loop = loop
        self.cache = ResponseCache(self._fetch, **cache_opts) if cache_opts is not None else None
        if self.cache is not None:
            self.cache.start = self._start  # misses without a Task (the coroutine stays for tests)

    def __repr__(self) -> str:
        return f"ForwardZone({self.zone}, {self.forwarder!r}, cached={self.cache is not None})"

    def _start(self, q: Query, done: ScanDone) -> None:
        """The cache's fetch, callback style (no Task): see Forwarder.start. The answer
        comes as the forwarder's Scan, so the cache does not scan it a second time."""
        if self.loop is not None and self.loop.seen(q.name):
            raise ForwardError("our own loop probe came back")
        self.forwarder.start(q.name, q.qtype, q.qclass, q.do, q.cd, done, scanned=True)

    async def _fetch(self, q: Query) -> W.Scan:
        if self.loop is not None and self.loop.seen(q.name):
            raise ForwardError("our own loop probe came back")
        return await self.forwarder.query_scan(q.name, q.qtype, q.qclass, do=q.do, cd=q.cd)

    def lookup(self, q: Query, limit: int | None) -> bytes | None:
        """A fresh cached reply, synchronously, or None (the bytes of `ResponseCache.lookup`'s Hit)."""
        hit = self.cache.lookup(q, limit) if self.cache is not None else None
        return hit.reply if hit is not None else None

    async def resolve(self, q: Query, limit: int | None) -> bytes:
        """The client's reply: cached, forwarded, stale, REFUSED (overload) or SERVFAIL."""
        if self.cache is not None:
            return await self.cache.resolve(q, limit)
        try:
            s = await self._fetch(q)  # scanned (and checked) by the forwarder
        except Overloaded:
            return W.error_reply(q, Rcode.REFUSED)
        except (ForwardError, Guarded):
            return W.error_reply(q, Rcode.SERVFAIL)
        return W.render(s.wire, s.qend, s.ttl_offsets, None, q, limit)

    def close(self) -> None:
        self.forwarder.close()
        if self.cache is not None:
            self.cache.close()


class ForwardTable:
    """Forward zones by name; `route()` picks the longest zone containing a name."""

    def __init__(self, zones: Iterable[ForwardZone] = ()) -> None:
        self._zones: dict[bytes, ForwardZone] = {}
        for z in zones:
            self.add(z)

    def add(self, zone: ForwardZone) -> None:
        self._zones[to_wire(zone.zone)] = zone

    @property
    def zones(self) -> list[ForwardZone]:
        return list(self._zones.values())

    def route(self, name: bytes) -> ForwardZone | None:
        """Longest-suffix match on label boundaries; `name` is lowercased wire form."""
        zones = self._zones
        i, n = 0, len(name)
        while i < n:
            z = zones.get(name[i:] if i else name)
            if z is not None:
                return z
            if name[i] == 0:
                break
            i += name[i] + 1
        return None

    def close(self) -> None:
        for z in self._zones.values():
            z.close()


def build_forward_table(
    default: Sequence[UpstreamSpec],
    stubs: Mapping[str, Sequence[UpstreamSpec]],
    *,
    cache_opts: Mapping[str, Any] | None,
    forward_opts: Mapping[str, Any],
    except_zones: Iterable[str] = (),
    loop: LoopDetector | None = None,
) -> ForwardTable:
    """'.' to `default` and each stub zone to its servers, all cached with `cache_opts` (None:
    not cached); `forward_opts` are the Forwarder's settings (forward/settings.py).

    `except_zones` (the cluster zone) are never sent to any of these upstreams.
    """
    fo = dict(forward_opts)
    ex = tuple(except_zones)
    table = ForwardTable()
    if default:
        table.add(ForwardZone(".", Forwarder(default, except_zones=ex, name=".", **fo), cache_opts, loop))
    for zone, servers in stubs.items():
        z = _zone(zone)
        table.add(ForwardZone(z, Forwarder(servers, except_zones=ex, name=z, **fo), cache_opts, loop))
    return table
