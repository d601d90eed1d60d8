"""External zones (CoreDNS `k8s_external`): how clients outside the cluster reach a Service.

Each external zone publishes `<svc>.<ns>.<zone>` for the Services that can be reached
from outside: the `status.loadBalancer.ingress` IPs and `spec.externalIPs` as A/AAAA (an
ingress hostname, when there is no IP, as a CNAME), SRV `_<port>._<proto>` names for named
ports, and, with `headless`, a headless Service's ready endpoints and their names. A
ClusterIP never appears: it means nothing outside the cluster. The apex holds the SOA and
the NS `ns1.<apex>.<zone>`, whose addresses are this server's outside addresses (the
kube-dns Service's ingress or externalIPs, else the listen addresses), as CoreDNS does.

The zone follows the same store as the cluster zone (`cluster/zone.py`) and recompiles
only the Services a change names; every owner name maps to what exists there, answers in
wire form (`wire.encode`), so a question is a dict lookup. Everything in these zones is
enumerable: a name not compiled does not exist (NXDOMAIN with the zone's SOA).
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from clusterdns.cluster.compile import (
    ANY_ORDER,
    CNAME,
    NS,
    SOA,
    SRV,
    Entry,
    Node,
    address_records,
    glue,
    positive,
    qtc,
)
from clusterdns.kube.objects import Port
from clusterdns.kube.store import ClusterStore, DepKey, ServiceView
from clusterdns.wire import encode as E
from clusterdns.wire.constants import Rcode, RRType
from clusterdns.wire.names import NameError_, in_zone, to_wire

log = logging.getLogger("clusterdns")

KUBE_DNS = ("kube-system", "kube-dns")  # whose outside addresses the NS name carries
NS_LABEL = "ns1"  # CoreDNS: the nameserver is ns1.<apex>.<zone>
_SRV_HEAD = struct.Struct("!HHH")
_T_SRV = int(RRType.SRV)


@dataclass(frozen=True, slots=True)
class ExternalSettings:
    zones: tuple[str, ...]
    apex: str = "dns"
    headless: bool = False
    ttl: int = 5
    ns_addresses: tuple[str, ...] = ()  # our own addresses when kube-dns has no outside address


def outside_addresses(view: ServiceView | None) -> tuple[str, ...]:
    """What reaches a Service from outside: ingress IPs, then externalIPs, each once."""
    if view is None:
        return ()
    s = view.service
    return tuple(dict.fromkeys(s.ingress_ips + s.external_ips))


class _Zone:
    """One external zone's names in wire form and its records."""

    def __init__(self, zone: str, settings: ExternalSettings) -> None:
        self.zone = zone.lower().strip(".")
        self.wire = to_wire(self.zone)
        self.ttl = settings.ttl
        self.apex_wire = to_wire(f"{settings.apex}.{self.zone}")
        self.ns_wire = to_wire(f"{NS_LABEL}.{settings.apex}.{self.zone}")
        self._soa_names = self.ns_wire + to_wire(f"hostmaster.{self.zone}")

    def soa_rdata(self, serial: int) -> bytes:
        return self._soa_names + struct.pack("!IIIII", serial % 2**32, 7200, 1800, 86400, self.ttl)

    def label(self, *labels: str) -> bytes:
        """`labels` + the zone in wire form; NameError_ or UnicodeError when not a name."""
        out = b""
        for label in labels:
            raw = label.encode("ascii")
            if not 0 < len(raw) < 64:
                raise NameError_(f"bad label {label!r}")
            out += bytes((len(raw),)) + raw
        name = out + self.wire
        if len(name) > 255:
            raise NameError_("name too long")
        return name


class ExternalZone:
    """Every external zone, compiled from a ClusterStore and kept current as it changes."""

    def __init__(self, store: ClusterStore, settings: ExternalSettings) -> None:
        self.store = store
        self.settings = settings
        self.zones = [_Zone(z, settings) for z in dict.fromkeys(z.lower().strip(".") for z in settings.zones)]
        # longest first: a zone inside another answers for its own names
        self._by_length = sorted(range(len(self.zones)), key=lambda i: -len(self.zones[i].wire))
        self.names: dict[bytes, Node] = {}
        self._owned: dict[tuple[str, str], tuple[bytes, ...]] = {}
        self._ent_users: dict[bytes, set[tuple[str, str]]] = {}  # <ns>.<zone> -> Services below it
        self.nodata: list[E.Prepared] = []
        self.nxdomain: list[E.Prepared] = []
        self.compile_all()
        store.subscribe(self.apply)

    def close(self) -> None:
        """Stop following the store."""
        self.store.unsubscribe(self.apply)

    # ------------------------------------------------------------------ compiling
    def compile_all(self) -> None:
        self.names.clear()
        self._owned.clear()
        self._ent_users.clear()
        for key in self.store.views:
            self._service_changed(key)
        self._apexes()

    def apply(self, changes: set[DepKey]) -> None:
        """Store listener: the Services a change names, then the apexes (the serial moved)."""
        for dep in changes:
            if dep[0] == "svc":
                self._service_changed((dep[1], dep[2]))
        self._apexes()

    def _service_changed(self, key: tuple[str, str]) -> None:
        names = self.names
        for name in self._owned.pop(key, ()):
            users = self._ent_users.get(name)
            if users is None:
                names.pop(name, None)
                continue
            users.discard(key)
            if not users:
                del self._ent_users[name]
                names.pop(name, None)
        view = self.store.view(*key)
        if view is None:
            return
        owned: list[bytes] = []
        for zone in self.zones:
            compiled = list(self._service(zone, view))
            if not compiled:
                continue
            ent = zone.label(key[0])  # valid: the Service's own name was
            users = self._ent_users.setdefault(ent, set())
            users.add(key)
            names.setdefault(ent, Node())
            owned.append(ent)
            for name, node in compiled:
                names[name] = node
                owned.append(name)
        self._owned[key] = tuple(owned)

    def _service(self, zone: _Zone, view: ServiceView) -> Iterator[tuple[bytes, Node]]:
        """The names one Service owns in one external zone."""
        s = view.service
        if s.external_name is not None:
            return  # an ExternalName is a name already
        try:
            name = zone.label(s.name, s.namespace)
        except (NameError_, UnicodeError):
            return
        if name == zone.ns_wire:
            return  # the apex's own nameserver name wins
        ttl = zone.ttl
        addresses = list(outside_addresses(view))
        if s.headless and self.settings.headless:
            yield from self._headless(zone, view, name, addresses)
            return
        if not addresses:
            yield from self._hostname(zone, s.ingress_hosts, s.ports, name)
            return
        records = address_records(addresses, ttl)
        ports = [p.port for p in s.ports if p.port]
        srv = _srv([(name, port) for port in dict.fromkeys(ports)], ttl)
        extra = glue(name, addresses, ttl)
        if srv:
            records[SRV] = srv
        yield name, Node(positive(name, records, {SRV: extra}))
        for proto_name, owners in _named_ports(s.ports, name).items():
            yield proto_name, Node()
            for owner, (_, _, numbers) in owners.items():
                srv = _srv([(name, p) for p in dict.fromkeys(numbers)], ttl)
                yield owner, Node(positive(owner, {SRV: srv}, {SRV: extra}))

    def _hostname(
        self, zone: _Zone, hosts: Sequence[str], ports: Sequence[Port], name: bytes
    ) -> Iterator[tuple[bytes, Node]]:
        """A load balancer known by a hostname only: a CNAME (its first), SRV names aim at it."""
        target = None
        for host in hosts:
            try:
                target = to_wire(host)
                break
            except (NameError_, UnicodeError):
                log.warning("external zone %s: ingress hostname %r is not a DNS name", zone.zone, host)
        if target is None or target == b"\x00":
            return
        ttl = zone.ttl
        cname = E.make(answer=[E.rr(E.OWNER, RRType.CNAME, ttl, target)], qtype=RRType.CNAME)
        yield name, Node({CNAME: cname}, target=target)
        for proto_name, owners in _named_ports(ports, name).items():
            yield proto_name, Node()
            for owner, (_, _, numbers) in owners.items():
                yield owner, Node(positive(owner, {SRV: _srv([(target, p) for p in dict.fromkeys(numbers)], ttl)}))

    def _headless(
        self, zone: _Zone, view: ServiceView, name: bytes, addresses: list[str]
    ) -> Iterator[tuple[bytes, Node]]:
        """A headless Service with `headless` on: its ready endpoints, as in the cluster zone."""
        ttl = zone.ttl
        by_host: dict[bytes, list[str]] = {}
        pairs: list[tuple[bytes, int, Port]] = []
        for b in view.backends:
            host = b.host.encode()
            if host.startswith(b"_") or not 0 < len(host) < 64 or len(host) + 1 + len(name) > 255:
                continue  # not a name we can publish (a `_proto` label is an SRV name)
            owner = bytes((len(host),)) + host + name
            by_host.setdefault(owner, []).append(b.ip)
            pairs += [(owner, p.port, p) for p in b.ports if p.port]
        own = list(dict.fromkeys(addresses + [ip for ips in by_host.values() for ip in ips]))
        if not own:
            return
        records = address_records(own, ttl)
        extra = [rr for owner, ips in by_host.items() for rr in glue(owner, ips, ttl)]
        srv = _srv(list(dict.fromkeys((o, n) for o, n, _ in pairs)), ttl)
        if srv:
            records[SRV] = srv
        yield name, Node(positive(name, records, {SRV: extra}))
        for owner, ips in by_host.items():
            yield owner, Node(positive(owner, address_records(ips, ttl)))
        for proto_name, owners in _named_ports([p for _, _, p in pairs], name).items():
            yield proto_name, Node()
            for owner, (port, proto, _) in owners.items():
                chosen = dict.fromkeys((o, n) for o, n, p in pairs if p.name == port and p.protocol == proto)
                yield owner, Node(positive(owner, {SRV: _srv(chosen, ttl)}, {SRV: extra}))

    def _ns_addresses(self) -> tuple[str, ...]:
        """This server's outside addresses: kube-dns's ingress or externalIPs, else the listen ones."""
        return outside_addresses(self.store.view(*KUBE_DNS)) or self.settings.ns_addresses

    def _apexes(self) -> None:
        """SOA, NS and the nameserver's name of every zone, and the negative templates."""
        serial = self.store.serial
        ns_ips = self._ns_addresses()
        nx_rcode = Rcode.NXDOMAIN if self.store.synced else Rcode.SERVFAIL  # never claim absence before sync
        self.nodata, self.nxdomain = [], []
        for zone in self.zones:
            ttl = zone.ttl
            rdata = zone.soa_rdata(serial)
            soa = E.make(answer=[E.rr(E.OWNER, RRType.SOA, ttl, rdata)], qtype=RRType.SOA)
            ns = E.make(
                answer=[E.rr(E.OWNER, RRType.NS, ttl, zone.ns_wire)],
                additional=glue(zone.ns_wire, ns_ips, ttl),
                qtype=RRType.NS,
            )
            self.names[zone.wire] = Node({SOA: soa, NS: ns})
            self.names.setdefault(zone.apex_wire, Node())
            self.names[zone.ns_wire] = Node(positive(zone.ns_wire, address_records(ns_ips, ttl)))
            full_soa = E.rr(zone.wire, RRType.SOA, ttl, rdata)
            self.nodata.append(E.make(authority=[full_soa]))
            self.nxdomain.append(E.make(rcode=nx_rcode, authority=[full_soa]))

    # ------------------------------------------------------------------ transfer
    @property
    def apex_wires(self) -> list[bytes]:
        """Every external zone's apex in wire form: what an AXFR may name (cluster/transfer.py)."""
        return [z.wire for z in self.zones]

    def snapshot(self) -> dict[bytes, Entry]:
        """The index at this instant, for a zone transfer: names are only ever replaced or
        removed, never changed in place, so a shallow copy stays the zones as they were."""
        return dict(self.names)

    # ------------------------------------------------------------------ answering
    def apex_of(self, name: bytes) -> int | None:
        """The index of the external zone a lowercased wire name is in, or None."""
        for i in self._by_length:
            if in_zone(name, self.zones[i].wire):
                return i
        return None

    def answer(self, name: bytes, qtype: int) -> E.Prepared:
        """Any IN question about a name in an external zone (the caller checked `apex_of`)."""
        i = self.apex_of(name)
        assert i is not None
        node = self.names.get(name)
        if node is None:
            return self.nxdomain[i]  # everything here is compiled: not found is absent
        if node.target is not None:
            return node.types()[CNAME]  # any type: the alias (its target is outside our zones)
        if qtype == RRType.ANY:
            found = node.types()
            p = next((found[k] for k in ANY_ORDER if k in found), None)
            if p is None:
                return self.nodata[i]
            return E.make(
                answer=E.split_records(p.body[: p.ans_end], p.an),
                additional=E.split_records(p.body[p.auth_end :], p.ar),
                qtype=RRType.ANY,
            )
        p = node.get(qtc(qtype))
        return self.nodata[i] if p is None else p


def _srv(targets: Iterable[tuple[bytes, int]], ttl: int) -> list[bytes]:
    """SRV records (priority 0, weight floor(100/n), at least 1; targets in full, RFC 2782)."""
    unique = list(targets)
    if not unique:
        return []
    weight = max(1, 100 // len(unique))
    return [E.rr(E.OWNER, _T_SRV, ttl, _SRV_HEAD.pack(0, weight, port) + target) for target, port in unique]


def _named_ports(ports: Iterable[Port], name: bytes) -> dict[bytes, dict[bytes, tuple[str, str, list[int]]]]:
    """The named ports below `name`: `_proto` empty non-terminal -> `_port._proto` owner ->
    (port name, protocol, port numbers); names that cannot be labels are left out."""
    out: dict[bytes, dict[bytes, tuple[str, str, list[int]]]] = {}
    for p in ports:
        if not (p.name and p.port and 0 < len(p.name) < 63 and 0 < len(p.protocol) < 63):
            continue
        proto_name = bytes((len(p.protocol) + 1,)) + b"_" + p.protocol.encode() + name
        owner = bytes((len(p.name) + 1,)) + b"_" + p.name.encode() + proto_name
        if len(owner) > 255:
            continue
        entry = out.setdefault(proto_name, {}).setdefault(owner, (p.name, p.protocol, []))
        entry[2].append(p.port)
    return out


__all__ = ["ExternalSettings", "ExternalZone", "outside_addresses"]
