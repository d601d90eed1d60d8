"""The request handler's door to forwarding (`Forwarding`), and the forwarding
`clusterdns serve` builds from its flags (`cluster_forwarding`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

from clusterdns.cache.cache import Hit, Later, Notify, ResponseCache
from clusterdns.forward.forwarder import Forwarder
from clusterdns.forward.loop import LoopDetector, check_self_forwarding
from clusterdns.forward.sources import (
    choose_upstreams,
    load_kube_dns_configmap,
    parse_stub,
)
from clusterdns.forward.table import ForwardTable, ForwardZone, build_forward_table
from clusterdns.forward.upstream import parse_hostport
from clusterdns.wire import encode as E, scan as W
from clusterdns.wire.constants import CLASSIC_UDP, EDNS_UDP, Rcode, RRClass, RRType
from clusterdns.wire.encode import Prepared
from clusterdns.wire.names import Malformed, in_zone, to_text, to_wire
from clusterdns.wire.question import Query

log = logging.getLogger("clusterdns.forward")
#: what is never forwarded, as plain ints (an IntEnum member costs ~0.2 us a read, per miss)
_NOT_FORWARDED = frozenset((int(RRType.OPT), int(RRType.IXFR), int(RRType.AXFR)))
_C_IN = int(RRClass.IN)
ROUTE_MEMO = 65536  # names with hits remembered by `Forwarding.caches` before it starts over


class Forwarding:
    """The request handler's door to forwarding.

    `handle()` takes a query for a name outside the authoritative zones (`local_zones`)
    straight to its forward zone, without dnslib: a cache hit is answered synchronously,
    a miss returns an asyncio.Future of the reply (resolved by callbacks: no Task), or
    with `notify` hands the reply to that callback, an uncached zone a coroutine.
    `follow()` runs after the cluster zone answered: a reverse name it does not know
    falls through to the upstreams (kubeadm's `fallthrough in-addr.arpa ip6.arpa`), and
    an ExternalName target outside the zone is resolved upstream and appended after the
    CNAME.
    """

    def __init__(
        self,
        table: ForwardTable,
        *,
        local_zones: Iterable[str] = (),
        fallthrough: Iterable[str] = ("in-addr.arpa", "ip6.arpa"),
        max_udp: int = EDNS_UDP,
        loop: LoopDetector | None = None,
    ) -> None:
        self.table = table
        self.local = tuple(to_wire(z) for z in local_zones)
        self.fallthrough_zones = tuple(to_wire(z) for z in fallthrough)
        self.max_udp = max_udp
        self.loop = loop
        self.errors = 0
        self.looped = False  # a forwarding loop was found: the app exits non-zero
        # name -> the cache `handle` answers it from (None: not forwarded, or uncached), so
        # the listeners' plain lane skips the suffix walk of `route` (bounded, a pure memo)
        self.caches: dict[bytes, ResponseCache | None] = {}
        self._tasks: list[asyncio.Task[None]] = []

    def _is_local(self, name: bytes) -> bool:
        # one C call rules out every forwarded name (they end in none of the local zones);
        # the label walk only confirms the few that do (node-cache: no local zones at all)
        if not self.local or not name.endswith(self.local):
            return False
        return any(in_zone(name, z) for z in self.local)

    def _limit(self, q: Query, tcp: bool) -> int | None:
        if tcp:
            return None
        return CLASSIC_UDP if not q.edns else max(CLASSIC_UDP, min(q.udp_size, self.max_udp))

    def cache_for(self, name: bytes) -> ResponseCache | None:
        """The cache of the forward zone `handle` takes `name` (lowercased wire form) to;
        None when the name is not forwarded (local) or its zone is uncached."""
        zone = None if self._is_local(name) else self.table.route(name)
        return zone.cache if zone is not None else None

    def remember(self, name: bytes, cache: ResponseCache) -> None:
        """Memoise `cache_for(name)` in `caches` for the listeners' plain lane, once the
        name had a hit there: names that never hit (a flood of junk) take no room."""
        if len(self.caches) >= ROUTE_MEMO:
            self.caches.clear()  # costs a route (~1 us) per name on its next hit
        self.caches[name] = cache

    def handle(
        self, q: Query, data: bytes, tcp: bool, notify: Notify | None = None
    ) -> Hit | bytes | Awaitable[bytes] | Later | None:
        """A cache `Hit` (reply + entry, counted), else the reply (bytes, a Future or a
        coroutine) for a forwarded name; None: not ours to forward. With `notify`, a
        cache miss gives `cache.LATER` and its reply to `notify` (no Future: see
        `ResponseCache.miss`). A Future, coroutine or `notify` never fails: errors
        become SERVFAIL replies."""
        if q.qclass != _C_IN or q.qtype in _NOT_FORWARDED or self._is_local(q.name):
            return None
        zone = self.table.route(q.name)
        if zone is None:
            return None
        limit = self._limit(q, tcp)
        cache = zone.cache
        if cache is not None:
            hit = cache.lookup(q, limit)
            if hit is not None:
                return hit
        return self._miss(zone, q, limit, notify)

    def _miss(
        self, zone: ForwardZone, q: Query, limit: int | None, notify: Notify | None = None
    ) -> bytes | Awaitable[bytes] | Later:
        """A cached zone's miss as a Future or LATER (the fast path); else the coroutine."""
        if zone.cache is None:
            return self._safe(zone.resolve(q, limit), q)
        try:
            return zone.cache.miss(q, limit, notify)
        except Exception:  # a bug must cost one answer, never the server
            self.errors += 1
            log.exception("internal error forwarding %s", q.text)
            return W.error_reply(q, Rcode.SERVFAIL)

    async def _safe(self, pending: Awaitable[bytes], q: Query) -> bytes:
        try:
            return await pending
        except Exception:  # a bug must cost one answer, never the server
            self.errors += 1
            log.exception("internal error forwarding %s", q.text)
            return W.error_reply(q, Rcode.SERVFAIL)

    def follow(
        self, q: Query, answer: Prepared, data: bytes, limit: int | None, apex: int
    ) -> bytes | Awaitable[bytes] | None:
        """After the cluster zone answered `q` with `answer`: a coroutine giving the final
        reply, or None to keep it. `apex` is the zone the name is in (0: the cluster zone)."""
        if answer.chase is not None:
            return self._chase(q, answer, data, limit)
        if (
            answer.rcode == Rcode.NXDOMAIN
            and apex != 0
            and self.fallthrough_zones
            and any(in_zone(q.name, z) for z in self.fallthrough_zones)
        ):
            zone = self.table.route(q.name)
            if zone is not None:
                return self._miss(zone, q, limit)  # type: ignore[return-value]  # no notify: never LATER
        return None

    async def _chase(self, q: Query, answer: Prepared, data: bytes, limit: int | None) -> bytes:
        """Resolve the CNAME target upstream and append its records (CoreDNS `upstream`)."""
        records = E.split_records(answer.body[: answer.ans_end], answer.an)
        rcode = answer.rcode
        target = answer.chase or b"\x00"
        try:
            zone = None if self._is_local(target) else self.table.route(target)
            if zone is not None:
                tail = target + q.qtype.to_bytes(2, "big") + int(RRClass.IN).to_bytes(2, "big")
                tq = Query(0, True, q.cd, tail, target, q.qtype, RRClass.IN, True, 65535, False)
                up_rcode, found = W.answer_records(await zone.resolve(tq, None))
                for owner, rtype, ttl, rdata in found:
                    records.append(E.rr(to_wire(owner), rtype, ttl, _rdata(rtype, rdata)))
                if up_rcode == Rcode.NXDOMAIN:
                    rcode = Rcode.NXDOMAIN  # RFC 6604: the rcode of the last name
        except (ValueError, Malformed) as exc:
            log.debug("cannot chase %s: %s", to_text(target), exc)
        except Exception:
            self.errors += 1
            log.exception("internal error chasing %s", to_text(target))
        full = E.make(rcode=rcode, answer=records)
        return E.assemble(data, q.qend, full, q.edns, q.do, 65535 if limit is None else limit)

    @property
    def forwarders(self) -> list[Forwarder]:
        return list({id(z.forwarder): z.forwarder for z in self.table.zones}.values())

    def start(self, on_loop: Callable[[], None], listening: Iterable[tuple[str, int]] = ()) -> None:
        """Look for a forwarding loop once the listeners are up; on one, log the cause
        plainly, set `looped` and call `on_loop` (the app then exits non-zero)."""
        specs = [u.spec for f in self.forwarders for u in f.upstreams]
        problem = check_self_forwarding(specs, listening)
        if problem:
            log.error("%s", problem)
            self.looped = True
            on_loop()
            return
        if self.loop is None:
            return
        loop = asyncio.get_running_loop()

        async def watch(detector: LoopDetector) -> None:
            await detector.tripped.wait()
            self.looped = True
            on_loop()

        self._tasks = [loop.create_task(watch(self.loop)), loop.create_task(self.loop.probe(self.forwarders))]

    def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        self.table.close()


def cluster_forwarding(
    zone: str,
    *,
    upstreams: Sequence[str] = (),
    resolv_conf: str | None = None,
    stubs: Sequence[str] = (),
    kube_dns_configmap: str | None = None,
    max_udp: int = EDNS_UDP,
    loop_detect: bool = True,
    cache_opts: Mapping[str, Any],
    forward_opts: Mapping[str, Any],
) -> Forwarding | None:
    """Forwarding for `clusterdns serve`, as kubeadm's Corefile: `forward . <servers>` and
    `cache 30` for names outside the cluster zone (the values: the serve settings' `forward`
    and `cache` sections, passed as `forward_opts` and `cache_opts`), stub
    domains to their servers, and `fallthrough in-addr.arpa ip6.arpa`. None when no
    forwarding flag was given (then names outside the zone are REFUSED).

    Servers for '.': `upstreams`, else the ConfigMap's upstreamNameservers, else the
    nameservers of `resolv_conf` (sources.choose_upstreams). Raises ValueError or OSError
    on bad input.
    """
    if not (upstreams or resolv_conf or stubs or kube_dns_configmap):
        return None
    cm = load_kube_dns_configmap(kube_dns_configmap) if kube_dns_configmap else None
    flag_stubs = dict(parse_stub(text) for text in stubs)
    default, stub_map = choose_upstreams([parse_hostport(u) for u in upstreams], flag_stubs, cm, resolv_conf or None)
    loop = LoopDetector() if loop_detect else None
    table = build_forward_table(
        default,
        stub_map,
        cache_opts=cache_opts,
        forward_opts=forward_opts,
        except_zones=[zone],
        loop=loop,
    )
    return Forwarding(table, local_zones=(zone, "in-addr.arpa", "ip6.arpa"), max_udp=max_udp, loop=loop)


def _rdata(rtype: int, text: str) -> bytes:
    """RDATA of an A, AAAA, CNAME or PTR record read by `scan.answer_records`."""
    if rtype in (RRType.A, RRType.AAAA):
        return E.address(text)[1]
    return to_wire(text)
