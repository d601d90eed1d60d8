"""Compile the cluster's names into wire form, one Service (or address) at a time.

Each function here turns part of the record store into `Node`s: what exists at one
owner name, with every answer already in wire form (`wire.encode.Prepared`). The zone
(`cluster/zone.py`) calls them when that part changes, so a query is a dict lookup.
The rules are the Kubernetes DNS specification's (shared/docs/dns-spec.md), as
CoreDNS's kubernetes plugin applies them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from clusterdns.kube.store import ServiceView
from clusterdns.wire import encode as E
from clusterdns.wire.constants import RRClass, RRType
from clusterdns.wire.names import NameError_, to_wire

SCHEMA_VERSION = "1.1.0"  # kubernetes/dns docs/specification.md
SCHEMA_TTL = 28800  # the spec's example and CoreDNS, independent of `ttl`
PODS_MODES = ("disabled", "insecure", "verified")

CLUSTER, IN_ADDR, IP6 = 0, 1, 2  # the apex a name belongs to (its SOA in negative answers)
REVERSE_ZONES = ("in-addr.arpa", "ip6.arpa")


def qtc(rtype: int) -> bytes:
    """The question's type and class bytes (class IN): the key of a node's answers."""
    return bytes((rtype >> 8, rtype & 0xFF, 0, 1))


A, AAAA, SRV, CNAME, PTR, TXT, SOA, NS = (qtc(t) for t in (
    RRType.A, RRType.AAAA, RRType.SRV, RRType.CNAME, RRType.PTR, RRType.TXT, RRType.SOA, RRType.NS))
#: RFC 8482: ANY gets one RRset, the first of these that exists
ANY_ORDER = (A, AAAA, SRV, PTR, TXT, SOA, NS)
NO_ANSWERS: dict[bytes, E.Prepared] = {}  # shared by every name that exists with no data


class Node:
    """What exists at one owner name.

    `answers` maps a question's type+class bytes to its compiled answer; `target` is
    set for a CNAME (ExternalName), whose other types are chased at query time;
    `closed` says every name below this one is compiled, so a name under it that is
    not in the index does not exist (False where names below are computed: pods,
    reverse-tree prefixes).
    """

    __slots__ = ("answers", "apex", "target", "closed")

    def __init__(self, answers: dict[bytes, E.Prepared] = NO_ANSWERS, apex: int = CLUSTER,
                 target: bytes | None = None, closed: bool = True) -> None:
        self.answers, self.apex, self.target, self.closed = answers, apex, target, closed

    def __repr__(self) -> str:
        return f"Node({sorted(self.answers)}, apex={self.apex}, target={self.target!r}, closed={self.closed})"


@dataclass(frozen=True, slots=True)
class ZoneSettings:
    zone: str = "cluster.local"
    ttl: int = 5
    pods: str = "insecure"
    ignore_empty_service: bool = False
    ns_addresses: tuple[str, ...] = ()  # our own addresses when there is no kube-dns Service

    def __post_init__(self) -> None:
        if self.pods not in PODS_MODES:
            raise ValueError(f"pods mode must be one of {', '.join(PODS_MODES)}")


def positive(name: bytes, records: dict[bytes, list[bytes]], extra: dict[bytes, list[bytes]] | None = None
             ) -> dict[bytes, E.Prepared]:
    """Answers for the RRsets at one name; `extra` gives additional records by type."""
    out = {}
    for key, rrs in records.items():
        if rrs:
            out[key] = E.Prepared(answer=rrs, additional=(extra or {}).get(key, ()),  # type: ignore[arg-type]
                                  qtype=(key[0] << 8) | key[1])
    return out


def address_records(ips: Iterable[str], ttl: int) -> dict[bytes, list[bytes]]:
    """A and AAAA RRsets (owner: the name asked) of addresses, duplicates once, in order."""
    out: dict[bytes, list[bytes]] = {}
    for ip in dict.fromkeys(ips):
        rtype, raw = E.address(ip)
        out.setdefault(A if rtype == RRType.A else AAAA, []).append(E.rr(E.OWNER, rtype, ttl, raw))
    return out


def glue(owner: bytes, ips: Iterable[str], ttl: int) -> list[bytes]:
    """A then AAAA records of a target name, owner written in full (additional section)."""
    v4, v6 = [], []
    for ip in dict.fromkeys(ips):
        rtype, raw = E.address(ip)
        (v4 if rtype == RRType.A else v6).append(E.rr(owner, rtype, ttl, raw))
    return v4 + v6


class Compiler:
    """Turns store parts into nodes for one zone's settings."""

    def __init__(self, settings: ZoneSettings) -> None:
        self.s = settings
        self.zone = settings.zone.lower().strip(".")
        self.zone_wire = to_wire(self.zone)
        self.svc_wire = b"\x03svc" + self.zone_wire
        self.pod_wire = b"\x03pod" + self.zone_wire
        self.mname = f"ns.dns.{self.zone}"
        self.mname_wire = to_wire(self.mname)
        self.apex_wires = (self.zone_wire, to_wire(REVERSE_ZONES[0]), to_wire(REVERSE_ZONES[1]))

    def fqdn(self, ns: str, svc: str, host: str | None = None) -> str:
        base = f"{svc}.{ns}.svc.{self.zone}"
        return f"{host}.{base}" if host else base

    def wire(self, *labels: str) -> bytes:
        """Wire form of `labels` followed by the zone (labels are already lowercase)."""
        out = b"".join(bytes((len(lab),)) + lab.encode() for lab in labels)
        return out + self.zone_wire

    # ------------------------------------------------------------------ Services
    def service(self, view: ServiceView) -> Iterator[tuple[bytes, Node]]:
        """Every name a Service owns: its own, endpoint names, `_proto` and SRV names."""
        s, ttl = view.service, self.s.ttl
        try:
            name = self.wire(s.name, s.namespace, "svc")
        except (UnicodeError, ValueError):
            return
        if len(name) > 255:
            return
        if s.external_name is not None:
            node = self._external_name(s.external_name)
            if node is not None:
                yield name, node
            return  # nothing lives below an ExternalName
        if s.headless and not view.backends:
            return  # spec 2.4.1: no ready endpoints, no names at all
        fqdn = self.fqdn(s.namespace, s.name)
        if s.headless:
            records = address_records((b.ip for b in view.backends), ttl)
            pairs = [(self.fqdn(s.namespace, s.name, b.host), p.port) for b in view.backends for p in b.ports if p.port]
            named = [p for b in view.backends for p in b.ports if p.name and p.port]
        else:
            records = address_records(s.cluster_ips, ttl) if not (self.s.ignore_empty_service and not view.backends) else None
            pairs = [(fqdn, p.port) for p in s.ports if p.port]
            named = [p for p in s.ports if p.name and p.port]
        if records is not None:
            srv, extra = self._srv(pairs, view)
            if srv:
                records[SRV] = srv
            yield name, Node(positive(name, records, {SRV: extra}))
        # endpoint names (for every Service type, as kube-dns and CoreDNS answer them)
        hosts: dict[str, list[str]] = {}
        for b in view.backends:
            hosts.setdefault(b.host, []).append(b.ip)
        for host, ips in hosts.items():
            if host.startswith("_") or not 0 < len(host) < 64:
                continue  # not a name we can publish (a `_proto` label is an SRV ENT)
            yield self.wire(host, s.name, s.namespace, "svc"), Node(positive(name, address_records(ips, ttl)))
        # _port._proto SRV names and their _proto empty non-terminals (RFC 8020)
        protos: dict[str, dict[str, None]] = {}
        for p in named:
            protos.setdefault(p.protocol, {})[p.name] = None
        for proto, ports in protos.items():
            if not 0 < len(proto) < 63:
                continue
            yield self.wire("_" + proto, s.name, s.namespace, "svc"), Node()
            for port in ports:
                if not 0 < len(port) < 63:
                    continue
                if s.headless:
                    pairs = [(self.fqdn(s.namespace, s.name, b.host), p.port) for b in view.backends for p in b.ports
                             if p.name == port and p.protocol == proto and p.port]
                else:
                    pairs = [(fqdn, p.port) for p in s.ports if p.name == port and p.protocol == proto and p.port]
                srv, extra = self._srv(pairs, view)
                if srv:
                    owner = self.wire("_" + port, "_" + proto, s.name, s.namespace, "svc")
                    yield owner, Node(positive(owner, {SRV: srv}, {SRV: extra}))

    def _srv(self, pairs: list[tuple[str, int | None]], view: ServiceView) -> tuple[list[bytes], list[bytes]]:
        """SRV records (priority 0, weight floor(100/n), at least 1, n after de-duplication)
        and the addresses of their targets for the additional section (RFC 2782)."""
        unique = list(dict.fromkeys(pairs))
        if not unique:
            return [], []
        weight = max(1, 100 // len(unique))
        ttl = self.s.ttl
        records = [E.rr(E.OWNER, RRType.SRV, ttl, E.srv(0, weight, port or 0, target)) for target, port in unique]
        extra: list[bytes] = []
        done: set[str] = set()
        s = view.service
        base = self.fqdn(s.namespace, s.name)
        for target, _ in unique:
            if target in done:
                continue
            done.add(target)
            if target == base:
                ips: list[str] = [b.ip for b in view.backends] if s.headless else list(s.cluster_ips)
                if not s.headless and self.s.ignore_empty_service and not view.backends:
                    ips = []
            else:
                host = target[: -len(base) - 1]
                ips = [b.ip for b in view.backends if b.host == host]
            extra += glue(to_wire(target), ips, ttl)
        return records, extra

    def _external_name(self, target: str) -> Node | None:
        try:
            import ipaddress
            ipaddress.ip_address(target)
            return None  # an IP is not a valid externalName target
        except ValueError:
            pass
        try:
            target_wire = to_wire(target)
        except (NameError_, UnicodeError):
            return None
        cname = E.Prepared(answer=[E.rr(E.OWNER, RRType.CNAME, self.s.ttl, target_wire)], qtype=RRType.CNAME)
        return Node({CNAME: cname}, target=target_wire)

    # ------------------------------------------------------------------ fixed names
    def namespace(self, ns: str) -> Iterator[tuple[bytes, Node]]:
        """`<ns>.svc.<zone>` and, unless pods are disabled, `<ns>.pod.<zone>` (whose
        children, pod names, are computed from the name: not closed)."""
        if not 0 < len(ns) < 64:
            return
        yield bytes((len(ns),)) + ns.encode() + self.svc_wire, Node()
        if self.s.pods != "disabled":
            yield bytes((len(ns),)) + ns.encode() + self.pod_wire, Node(closed=False)

    def fixed(self) -> Iterator[tuple[bytes, Node]]:
        """Names that exist in every cluster: the trees' empty non-terminals, dns-version."""
        yield self.svc_wire, Node()
        yield self.pod_wire, Node()
        yield self.wire("dns"), Node()
        owner = self.wire("dns-version")
        yield owner, Node({TXT: E.Prepared(answer=[E.rr(E.OWNER, RRType.TXT, SCHEMA_TTL, E.txt(SCHEMA_VERSION))],
                                           qtype=RRType.TXT)})

    def soa_rdata(self, serial: int) -> bytes:
        return E.soa(self.mname, f"hostmaster.{self.zone}", serial, 7200, 1800, 86400, self.s.ttl)

    def soa_record(self, apex: int, serial: int) -> bytes:
        """The SOA of `apex`, owner in full: MINIMUM is `ttl`, the negative-caching TTL (RFC 2308 5)."""
        return E.rr(self.apex_wires[apex], RRType.SOA, min(self.s.ttl, 300), self.soa_rdata(serial))

    def apexes(self, serial: int, ns_ips: tuple[str, ...]) -> Iterator[tuple[bytes, Node]]:
        """The three apexes (SOA, NS with our addresses as glue) and `ns.dns.<zone>`."""
        ttl = self.s.ttl
        glue_rrs = glue(self.mname_wire, ns_ips, ttl)
        for apex, wire in enumerate(self.apex_wires):
            soa = E.Prepared(answer=[E.rr(E.OWNER, RRType.SOA, min(ttl, 300), self.soa_rdata(serial))], qtype=RRType.SOA)
            ns = E.Prepared(answer=[E.rr(E.OWNER, RRType.NS, ttl, self.mname_wire)], additional=glue_rrs, qtype=RRType.NS)
            yield wire, Node({SOA: soa, NS: ns}, apex=apex, closed=apex == CLUSTER)
        yield self.mname_wire, Node(positive(self.mname_wire, address_records(ns_ips, ttl)))

    # ------------------------------------------------------------------ reverse zones
    def ptr(self, names: list[str], apex: int) -> Node:
        """The PTR node of one address: the names that point at it."""
        ttl = self.s.ttl
        records = [E.rr(E.OWNER, RRType.PTR, ttl, to_wire(n)) for n in dict.fromkeys(names)]
        return Node({PTR: E.Prepared(answer=records, qtype=RRType.PTR)}, apex=apex)


def reverse_wire(ip: str) -> tuple[bytes, int]:
    """The canonical reverse name of an address in wire form, and its apex."""
    if ":" in ip:
        import ipaddress
        nibbles = ipaddress.IPv6Address(ip).exploded.replace(":", "")[::-1]
        return b"".join(b"\x01" + c.encode() for c in nibbles) + b"\x03ip6\x04arpa\x00", IP6
    return b"".join(bytes((len(o),)) + o.encode() for o in reversed(ip.split("."))) + b"\x07in-addr\x04arpa\x00", IN_ADDR


__all__ = ["Compiler", "Node", "ZoneSettings", "qtc", "reverse_wire", "RRClass"]
