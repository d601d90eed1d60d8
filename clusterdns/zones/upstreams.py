"""Where forwarded names go: upstream lists from flags, resolv.conf and the kube-dns
ConfigMap, and the table of forward zones (stub domains and '.') with their caches.

The kube-dns ConfigMap (operators.md 1.6) has two keys, both JSON strings:
`stubDomains` ({"acme.local": ["1.2.3.4"]}) and `upstreamNameservers` (["8.8.8.8"]);
upstreamNameservers replaces the resolv.conf servers for '.'. It is read from a
directory (the ConfigMap mounted as files, as node-cache's `-kubednscm /etc/kube-dns`)
or from a YAML/JSON file (a ConfigMap object, or a plain mapping of the two keys).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from clusterdns.wire import encode as E
from clusterdns.wire.encode import Prepared
from clusterdns.wire import scan as W
from clusterdns.wire.constants import CLASSIC_UDP, EDNS_UDP, RRClass, RRType, Rcode
from clusterdns.wire.names import Malformed, in_zone, to_text, to_wire
from clusterdns.wire.question import Query
from clusterdns.zones.cache import ResponseCache
from clusterdns.zones.forward import (
    Done,
    Forwarder,
    ForwardError,
    Guarded,
    LoopDetector,
    Overloaded,
    UpstreamSpec,
    check_self_forwarding,
    parse_hostport,
)

log = logging.getLogger("clusterdns.forward")


def resolv_conf_upstreams(path: str | Path) -> list[UpstreamSpec]:
    """The `nameserver` lines of a resolv.conf (`forward . /etc/resolv.conf`)."""
    out = []
    for line in Path(path).read_text().splitlines():
        parts = line.split("#", 1)[0].split(";", 1)[0].split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            try:
                out.append(parse_hostport(parts[1]))
            except ValueError:
                log.warning("%s: ignoring nameserver %r", path, parts[1])
    return out


def parse_stub(text: str) -> tuple[str, list[UpstreamSpec]]:
    """'consul.local=10.150.0.1[:port][,more]' -> ('consul.local.', [UpstreamSpec...])."""
    zone, sep, servers = text.partition("=")
    if not sep or not zone.strip() or not servers.strip():
        raise ValueError(f"stub domain must look like ZONE=IP[:PORT][,IP...], not {text!r}")
    return _zone(zone), [parse_hostport(s) for s in servers.split(",") if s.strip()]


def _zone(text: str) -> str:
    return to_text(to_wire(text))


@dataclass(slots=True)
class KubeDnsConfig:
    """stubDomains and upstreamNameservers from a kube-dns ConfigMap."""

    stub_domains: dict[str, list[UpstreamSpec]] = field(default_factory=dict)
    upstream_nameservers: list[UpstreamSpec] = field(default_factory=list)


def load_kube_dns_configmap(path: str | Path) -> KubeDnsConfig:
    """Read the kube-dns ConfigMap from a mounted directory or a YAML/JSON file."""
    p = Path(path)
    raw: dict[str, Any] = {}
    if p.is_dir():
        for key in ("stubDomains", "upstreamNameservers"):
            f = p / key
            if f.is_file():
                raw[key] = f.read_text()
    else:
        doc = yaml.safe_load(p.read_text()) or {}  # YAML is a superset of JSON
        if not isinstance(doc, dict):
            raise ValueError(f"{p}: expected a mapping or a ConfigMap")
        raw = doc.get("data", doc) if doc.get("kind") == "ConfigMap" else doc
        raw = raw or {}
    cfg = KubeDnsConfig()
    stubs = _json_value(raw.get("stubDomains"), {}, p, "stubDomains")
    if not isinstance(stubs, dict):
        raise ValueError(f"{p}: stubDomains must be a map of domain to server list")
    for zone, servers in stubs.items():
        if not isinstance(servers, list) or not servers:
            raise ValueError(f"{p}: stubDomains[{zone!r}] must be a non-empty list")
        cfg.stub_domains[_zone(zone)] = [parse_hostport(str(s)) for s in servers]
    ups = _json_value(raw.get("upstreamNameservers"), [], p, "upstreamNameservers")
    if not isinstance(ups, list):
        raise ValueError(f"{p}: upstreamNameservers must be a list")
    cfg.upstream_nameservers = [parse_hostport(str(s)) for s in ups]
    return cfg


def _json_value(value: Any, empty: Any, path: Path, key: str) -> Any:
    """ConfigMap values are JSON strings; a YAML file may hold the structure itself."""
    if value is None or value == "":
        return empty
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: {key} is not valid JSON: {exc}") from None
    return value


class ForwardZone:
    """One forward zone: names under `zone` go to `forwarder`, through `cache` if given."""

    def __init__(self, zone: str, forwarder: Forwarder, cache_opts: Mapping[str, Any] | None,
                 loop: LoopDetector | None = None) -> None:
        self.zone = _zone(zone)
        self.forwarder = forwarder
        self.loop = loop
        self.cache = ResponseCache(self._fetch, **cache_opts) if cache_opts is not None else None
        if self.cache is not None:
            self.cache.start = self._start  # misses without a Task (the coroutine stays for tests)

    def __repr__(self) -> str:
        return f"ForwardZone({self.zone}, {self.forwarder!r}, cached={self.cache is not None})"

    def _start(self, q: Query, done: Done) -> None:
        """The cache's fetch, callback style (no Task): see Forwarder.start."""
        if self.loop is not None and self.loop.seen(q.name):
            raise ForwardError("our own loop probe came back")
        self.forwarder.start(q.name, q.qtype, q.qclass, q.do, q.cd, done)

    async def _fetch(self, q: Query) -> bytes:
        if self.loop is not None and self.loop.seen(q.name):
            raise ForwardError("our own loop probe came back")
        return await self.forwarder.query(q.name, q.qtype, q.qclass, do=q.do, cd=q.cd)

    def lookup(self, q: Query, limit: int | None) -> bytes | None:
        """A fresh cached reply, synchronously, or None."""
        return self.cache.lookup(q, limit) if self.cache is not None else None

    async def resolve(self, q: Query, limit: int | None) -> bytes:
        """The client's reply: cached, forwarded, stale, REFUSED (overload) or SERVFAIL."""
        if self.cache is not None:
            return await self.cache.resolve(q, limit)
        try:
            wire = await self._fetch(q)
        except Overloaded:
            return W.error_reply(q, Rcode.REFUSED)
        except (ForwardError, Guarded):
            return W.error_reply(q, Rcode.SERVFAIL)
        try:
            s = W.scan_response(wire)
        except Malformed:
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


def build_forward_table(default: Sequence[UpstreamSpec], stubs: Mapping[str, Sequence[UpstreamSpec]],
                        *, cache_opts: Mapping[str, Any] | None,
                        forward_opts: Mapping[str, Any] | None = None,
                        except_zones: Iterable[str] = (),
                        loop: LoopDetector | None = None) -> ForwardTable:
    """'.' to `default` and each stub zone to its servers, all cached with `cache_opts`.

    `except_zones` (the cluster zone) are never sent to any of these upstreams.
    """
    fo = dict(forward_opts or {})
    ex = tuple(except_zones)
    table = ForwardTable()
    if default:
        table.add(ForwardZone(".", Forwarder(default, except_zones=ex, name=".", **fo),
                              cache_opts, loop))
    for zone, servers in stubs.items():
        z = _zone(zone)
        table.add(ForwardZone(z, Forwarder(servers, except_zones=ex, name=z, **fo),
                              cache_opts, loop))
    return table


class Forwarding:
    """The request handler's door to forwarding.

    `handle()` takes a query for a name outside the authoritative zones (`local_zones`)
    straight to its forward zone, without dnslib: a cache hit is answered synchronously,
    a miss returns an asyncio.Future of the reply (resolved by callbacks: no Task), an
    uncached zone a coroutine. `follow()` runs after the cluster zone answered: a
    reverse name it does not know falls through to the upstreams (kubeadm's
    `fallthrough in-addr.arpa ip6.arpa`), and an ExternalName target outside the zone
    is resolved upstream and appended after the CNAME.
    """

    def __init__(self, table: ForwardTable, *, local_zones: Iterable[str] = (),
                 fallthrough: Iterable[str] = ("in-addr.arpa", "ip6.arpa"),
                 max_udp: int = EDNS_UDP, loop: LoopDetector | None = None) -> None:
        self.table = table
        self.local = tuple(to_wire(z) for z in local_zones)
        self.fallthrough_zones = tuple(to_wire(z) for z in fallthrough)
        self.max_udp = max_udp
        self.loop = loop
        self.errors = 0
        self.looped = False  # a forwarding loop was found: the app exits non-zero
        self.last_hit: Any = None  # the ResponseCache of the last hit (take_hit)
        self._tasks: list[asyncio.Task[None]] = []

    def _is_local(self, name: bytes) -> bool:
        if not self.local:
            return False  # node-cache: no authoritative zones (the common miss path)
        return any(in_zone(name, z) for z in self.local)

    def _limit(self, q: Query, tcp: bool) -> int | None:
        if tcp:
            return None
        return CLASSIC_UDP if not q.edns else max(CLASSIC_UDP, min(q.udp_size, self.max_udp))

    def handle(self, q: Query, data: bytes, tcp: bool) -> bytes | Awaitable[bytes] | None:
        """The reply (bytes, a Future or a coroutine) for a forwarded name; None: not ours
        to forward. A Future or coroutine never fails: errors become SERVFAIL replies."""
        if q.qclass != RRClass.IN or q.qtype in (RRType.OPT, RRType.IXFR, RRType.AXFR) or self._is_local(q.name):
            return None
        zone = self.table.route(q.name)
        if zone is None:
            return None
        limit = self._limit(q, tcp)
        hit = zone.lookup(q, limit)
        if hit is not None:
            self.last_hit = zone.cache
            return hit
        return self._miss(zone, q, limit)

    def _miss(self, zone: ForwardZone, q: Query, limit: int | None
              ) -> bytes | Awaitable[bytes]:
        """A cached zone's miss as a Future (the fast path); else the coroutine."""
        if zone.cache is None:
            return self._safe(zone.resolve(q, limit), q)
        try:
            return zone.cache.miss(q, limit)
        except Exception:  # a bug must cost one answer, never the server
            self.errors += 1
            log.exception("internal error forwarding %s", q.text)
            return W.error_reply(q, Rcode.SERVFAIL)

    def take_hit(self):  # noqa: ANN201 - (ResponseCache, Entry, replay-until) or None
        """After `handle` answered from cache: what the server needs to replay that answer."""
        cache, self.last_hit = self.last_hit, None
        if cache is None or cache.last_hit is None:
            return None
        return cache, cache.last_hit, cache.last_replay_until

    async def _safe(self, pending: Awaitable[bytes], q: Query) -> bytes:
        try:
            return await pending
        except Exception:  # a bug must cost one answer, never the server
            self.errors += 1
            log.exception("internal error forwarding %s", q.text)
            return W.error_reply(q, Rcode.SERVFAIL)

    def follow(self, q: Query, answer: Prepared, data: bytes, limit: int | None, apex: int
               ) -> Awaitable[bytes] | None:
        """After the cluster zone answered `q` with `answer`: a coroutine giving the final
        reply, or None to keep it. `apex` is the zone the name is in (0: the cluster zone)."""
        if answer.chase is not None:
            return self._chase(q, answer, data, limit)
        if answer.rcode == Rcode.NXDOMAIN and apex != 0 and self.fallthrough_zones:
            if any(in_zone(q.name, z) for z in self.fallthrough_zones):
                zone = self.table.route(q.name)
                if zone is not None:
                    return self._miss(zone, q, limit)
        return None

    async def _chase(self, q: Query, answer: Prepared, data: bytes, limit: int | None) -> bytes:
        """Resolve the CNAME target upstream and append its records (CoreDNS `upstream`)."""
        records = E.split_records(answer.body[:answer.ans_end], answer.an)
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

        self._tasks = [loop.create_task(watch(self.loop)),
                       loop.create_task(self.loop.probe(self.forwarders))]

    def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        self.table.close()


def cluster_forwarding(zone: str, *, upstreams: Sequence[str] = (), resolv_conf: str | None = None,
                       stubs: Sequence[str] = (), kube_dns_configmap: str | None = None,
                       max_udp: int = EDNS_UDP, loop_detect: bool = True,
                       cache_opts: Mapping[str, Any] | None = None,
                       forward_opts: Mapping[str, Any] | None = None) -> Forwarding | None:
    """Forwarding for `clusterdns serve`, as kubeadm's Corefile: `forward . <servers>`
    (`max_concurrent 1000`) and `cache 30` for names outside the cluster zone, stub
    domains to their servers, and `fallthrough in-addr.arpa ip6.arpa`. None when no
    forwarding flag was given (then names outside the zone are REFUSED).

    Servers for '.': `upstreams`, else the ConfigMap's upstreamNameservers, else the
    nameservers of `resolv_conf`. Raises ValueError or OSError on bad input.
    """
    if not (upstreams or resolv_conf or stubs or kube_dns_configmap):
        return None
    default: list[UpstreamSpec] = []
    stub_map: dict[str, list[UpstreamSpec]] = {}
    if kube_dns_configmap:
        cm = load_kube_dns_configmap(kube_dns_configmap)
        stub_map.update(cm.stub_domains)
        default = cm.upstream_nameservers
    for text in stubs:
        z, servers = parse_stub(text)
        stub_map[z] = servers
    if upstreams:
        default = [parse_hostport(u) for u in upstreams]
    if not default and resolv_conf:
        default = resolv_conf_upstreams(resolv_conf)
        if not default:
            raise ValueError(f"{resolv_conf} lists no nameserver; pass --upstream")
    loop = LoopDetector() if loop_detect else None
    table = build_forward_table(default, stub_map, cache_opts=dict(SERVE_CACHE, **(cache_opts or {})),
                                forward_opts=forward_opts, except_zones=[zone], loop=loop)
    return Forwarding(table, local_zones=(zone, "in-addr.arpa", "ip6.arpa"), max_udp=max_udp,
                      loop=loop)


#: kubeadm's `cache 30` for forwarded names, plus serve-stale for an hour (CoreDNS's
#: `serve_stale` default duration) so an upstream outage does not fail cached names
SERVE_CACHE: dict[str, Any] = dict(max_ttl=30, max_negative_ttl=30, serve_stale=3600.0)


def _rdata(rtype: int, text: str) -> bytes:
    """RDATA of an A, AAAA, CNAME or PTR record read by `scan.answer_records`."""
    if rtype in (RRType.A, RRType.AAAA):
        return E.address(text)[1]
    return to_wire(text)
