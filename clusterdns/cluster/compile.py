"""Compile the cluster's names into wire form, one Service (or address) at a time.

Each function here turns part of the record store into `Node`s: what exists at one
owner name, with every answer already in wire form (`wire.encode.Prepared`). The zone
(`cluster/zone.py`) calls them when that part changes, so a query is a dict lookup.
The rules are the Kubernetes DNS specification's (shared/docs/dns-spec.md), as
CoreDNS's kubernetes plugin applies them.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache

from clusterdns.cluster import tld
from clusterdns.kube.objects import Port
from clusterdns.kube.store import ServiceView
from clusterdns.wire import encode as E
from clusterdns.wire.constants import HEADER, RRType
from clusterdns.wire.names import NameError_, to_wire

SCHEMA_VERSION = "1.1.0"  # kubernetes/dns docs/specification.md
SCHEMA_TTL = 28800  # the spec's example and CoreDNS, independent of `ttl`
PODS_MODES = ("disabled", "insecure", "verified")

CLUSTER, IN_ADDR, IP6 = 0, 1, 2  # the apex a name belongs to (its SOA in negative answers)
REVERSE_ZONES = ("in-addr.arpa", "ip6.arpa")


def qtc(rtype: int) -> bytes:
    """The question's type and class bytes (class IN): the key of a node's answers."""
    return bytes((rtype >> 8, rtype & 0xFF, 0, 1))


A, AAAA, SRV, CNAME, PTR, TXT, SOA, NS = (
    qtc(t) for t in (RRType.A, RRType.AAAA, RRType.SRV, RRType.CNAME, RRType.PTR, RRType.TXT, RRType.SOA, RRType.NS)
)
#: RFC 8482: ANY gets one RRset, the first of these that exists
ANY_ORDER = (A, AAAA, SRV, PTR, TXT, SOA, NS)
NO_ANSWERS: dict[bytes, E.Prepared] = {}
_SRV_HEAD = struct.Struct("!HHH")
# plain ints for the per-record work: an IntEnum member costs ~0.2 us a read
_T_A, _T_SRV, _T_PTR = int(RRType.A), int(RRType.SRV), int(RRType.PTR)
_SOA_TAIL = struct.Struct("!IIIII")  # shared by every name that exists with no data


class Node:
    """What exists at one owner name.

    Its answers by the question's type+class bytes: a name with one RRset (most of
    them: endpoint names, SRV names, PTR names) keeps it in `tc`/`p`, others in the
    `answers` dict. `target` is set for a CNAME (ExternalName), whose other types are
    chased at query time; `closed` says every name below this one is compiled, so a
    name under it that is not in the index does not exist (False where names below are
    computed: pods, reverse-tree prefixes).
    """

    __slots__ = ("tc", "p", "answers", "apex", "target", "closed")

    def __init__(
        self,
        answers: dict[bytes, E.Prepared] = NO_ANSWERS,
        apex: int = CLUSTER,
        target: bytes | None = None,
        closed: bool = True,
    ) -> None:
        self.tc: bytes | None = None
        self.p: E.Prepared | None = None
        if len(answers) == 1:
            ((self.tc, self.p),) = answers.items()
            answers = NO_ANSWERS
        self.answers, self.apex, self.target, self.closed = answers, apex, target, closed

    def get(self, tc: bytes) -> E.Prepared | None:
        """The answer for a question's type+class bytes, if the name has that RRset."""
        return self.p if self.tc == tc else self.answers.get(tc)

    def types(self) -> dict[bytes, E.Prepared]:
        """Every answer at this name, by type+class."""
        return {self.tc: self.p} if self.tc is not None and self.p is not None else self.answers

    def __repr__(self) -> str:
        return f"Node({sorted(self.types())}, apex={self.apex}, target={self.target!r}, closed={self.closed})"


Entry = Node | bytes  # what the index holds at a name (see `leaf`)


def leaf(records: dict[bytes, list[bytes]], apex: int = CLUSTER) -> Entry:
    """A name with nothing below it: its lone record as bytes when it has just one (most
    endpoint and PTR names: a fifth of the memory of a Node), else a Node.

    The record's own type and class bytes (offsets 2-5, after the owner pointer) are the
    question's when it answers it, so the bytes need nothing beside them."""
    live = {k: v for k, v in records.items() if v}
    if len(live) == 1:
        (rrs,) = live.values()
        if len(rrs) == 1:
            return rrs[0]
    return Node(positive(b"", live), apex=apex)


def leaf_node(record: bytes, apex: int) -> Node:
    """The Node a lone record stands for (the rare paths read Nodes only)."""
    rtype = (record[2] << 8) | record[3]
    return Node({record[2:6]: E.make(answer=[record], qtype=rtype)}, apex=apex)


@dataclass(frozen=True, slots=True)
class ZoneSettings:
    zone: str = "cluster.local"
    ttl: int = 5
    pods: str = "insecure"
    ignore_empty_service: bool = False
    ns_addresses: tuple[str, ...] = ()  # our own addresses when there is no kube-dns Service
    refuse_tld_namespaces: bool = False  # nothing under <ns>.svc.<zone> when <ns> is a TLD (cluster/tld.py)

    def __post_init__(self) -> None:
        if self.pods not in PODS_MODES:
            raise ValueError(f"pods mode must be one of {', '.join(PODS_MODES)}")


def positive(
    name: bytes, records: dict[bytes, list[bytes]], extra: dict[bytes, list[bytes]] | None = None
) -> dict[bytes, E.Prepared]:
    """Answers for the RRsets at one name; `extra` gives additional records by type."""
    out = {}
    for key, rrs in records.items():
        if rrs:
            out[key] = E.make(
                answer=rrs,
                additional=(extra or {}).get(key, ()),
                qtype=(key[0] << 8) | key[1],
            )
    return out


def address_records(ips: Iterable[str], ttl: int) -> dict[bytes, list[bytes]]:
    """A and AAAA RRsets (owner: the name asked) of addresses, duplicates once, in order."""
    out: dict[bytes, list[bytes]] = {}
    for ip in dict.fromkeys(ips):
        rtype, raw = E.address(ip)
        out.setdefault(A if rtype == _T_A else AAAA, []).append(E.rr(E.OWNER, rtype, ttl, raw))
    return out


def _v4_first(packed: tuple[int, bytes]) -> bool:
    return packed[0] != _T_A


def _address_rrsets(packed: list[tuple[int, bytes]], ttl: int) -> dict[bytes, list[bytes]]:
    """`address_records` of addresses packed already (E.address)."""
    out: dict[bytes, list[bytes]] = {}
    for rtype, raw in packed:
        out.setdefault(A if rtype == _T_A else AAAA, []).append(E.rr(E.OWNER, rtype, ttl, raw))
    return out


def glue(owner: bytes, ips: Iterable[str], ttl: int) -> list[bytes]:
    """A then AAAA records of a target name, owner written in full (additional section)."""
    v4: list[bytes]
    v6: list[bytes]
    v4, v6 = [], []
    for ip in dict.fromkeys(ips):
        rtype, raw = E.address(ip)
        (v4 if rtype == _T_A else v6).append(E.rr(owner, rtype, ttl, raw))
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
        self._soa_names = self.mname_wire + to_wire(f"hostmaster.{self.zone}")
        self._ns: tuple[tuple[str, ...], list[E.Prepared], Node] | None = None  # (ns ips, NS answers, ns.dns node)
        #: namespaces whose svc tree is withheld (CVE-2022-2837); None with the option off
        self.refused: Callable[[str, str], bool] | None = tld.refused if settings.refuse_tld_namespaces else None

    def fqdn(self, ns: str, svc: str, host: str | None = None) -> str:
        base = f"{svc}.{ns}.svc.{self.zone}"
        return f"{host}.{base}" if host else base

    def wire(self, *labels: str) -> bytes:
        """Wire form of `labels` followed by the zone (labels are already lowercase)."""
        return b"".join(map(_label, labels)) + self.zone_wire

    def fqdn_wire(self, ns: str, svc: str, host: str | None = None) -> bytes:
        """`fqdn` in wire form, without going through text (compiling 100,000 names)."""
        base = _label(svc) + _label(ns) + self.svc_wire
        return _host(host) + base if host else base

    # ------------------------------------------------------------------ Services
    def service(self, view: ServiceView) -> Iterator[tuple[bytes, Entry]]:
        """Every name a Service owns: its own, endpoint names, `_proto` and SRV names."""
        s = view.service
        if self.refused is not None and self.refused(s.namespace, self.zone):
            return
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
        if s.headless:
            yield from self._headless(view, name)
        else:
            yield from self._own_address(view, name)

    def _headless(self, view: ServiceView, name: bytes) -> Iterator[tuple[bytes, Entry]]:
        """A headless Service: its name holds every ready endpoint's address, SRV targets
        are the endpoints' names."""
        ttl, backends = self.s.ttl, view.backends
        if not backends:
            return  # spec 2.4.1: no ready endpoints, no names at all
        hosts = [b.host for b in backends]  # dashed labels are made on each read
        by_host: dict[str, list[str]] = {}
        for b, h in zip(backends, hosts, strict=True):
            by_host.setdefault(h, []).append(b.ip)
        own_ips = [b.ip for b in backends]
        records = address_records(own_ips, ttl)
        pairs = [(h, p.port) for b, h in zip(backends, hosts, strict=True) for p in b.ports if p.port]
        srv, extra = self._srv(pairs, name, by_host, own_ips, name)
        if srv:
            records[SRV] = srv
        yield name, Node(positive(name, records, {SRV: extra}))
        yield from self._endpoint_names(by_host, name)

        def port_srv(port: str, proto: str, owner: bytes) -> tuple[list[bytes], list[bytes]]:
            pairs = [
                (h, p.port)
                for b, h in zip(backends, hosts, strict=True)
                for p in b.ports
                if p.name == port and p.protocol == proto and p.port
            ]
            return self._srv(pairs, name, by_host, own_ips, owner)

        yield from self._port_names([p for b in backends for p in b.ports if p.name and p.port], name, port_srv)

    def _own_address(self, view: ServiceView, name: bytes) -> Iterator[tuple[bytes, Entry]]:
        """A ClusterIP (or NodePort, LoadBalancer) Service: its name holds its ClusterIPs
        and is its own SRV target; its endpoints still get their names."""
        s, ttl = view.service, self.s.ttl
        by_host: dict[str, list[str]] = {}
        for h, ip in view.labelled():  # names and addresses only: no Backends made
            by_host.setdefault(h, []).append(ip)
        empty = self.s.ignore_empty_service and not view.entries
        # each ClusterIP packed once: its A/AAAA record and the SRV glue reuse it
        packed = [] if empty else sorted((E.address(ip) for ip in dict.fromkeys(s.cluster_ips)), key=_v4_first)
        memo: dict[tuple[int, ...], list[bytes]] = {}  # SRV records by port list, shared by the names
        if not empty:
            records = _address_rrsets(packed, ttl)
            srv, extra = self._own_srv([p.port for p in s.ports if p.port], name, packed, name, memo)
            if srv:
                records[SRV] = srv
            yield name, Node(positive(name, records, {SRV: extra}))
        yield from self._endpoint_names(by_host, name)

        def port_srv(port: str, proto: str, owner: bytes) -> tuple[list[bytes], list[bytes]]:
            ports = [p.port for p in s.ports if p.name == port and p.protocol == proto and p.port]
            return self._own_srv(ports, name, packed, owner, memo)

        yield from self._port_names([p for p in s.ports if p.name and p.port], name, port_srv)

    def _endpoint_names(self, by_host: dict[str, list[str]], name: bytes) -> Iterator[tuple[bytes, Entry]]:
        """Endpoint names (for every Service type, as kube-dns and CoreDNS answer them)."""
        ttl = self.s.ttl
        for host, ips in by_host.items():
            if host.startswith("_") or not 0 < len(host) < 64:
                continue  # not a name we can publish (a `_proto` label is an SRV ENT)
            if len(ips) == 1:  # most endpoints: the lone record, built directly
                rtype, raw = E.address(ips[0])
                yield _host(host) + name, E.rr(E.OWNER, rtype, ttl, raw)
            else:
                yield _host(host) + name, leaf(address_records(ips, ttl))

    def _port_names(
        self, named: list[Port], name: bytes, port_srv: Callable[[str, str, bytes], tuple[list[bytes], list[bytes]]]
    ) -> Iterator[tuple[bytes, Node]]:
        """`_port._proto` SRV names and their `_proto` empty non-terminals (RFC 8020)."""
        protos: dict[str, dict[str, None]] = {}
        for p in named:
            protos.setdefault(p.protocol, {})[p.name] = None
        for proto, ports in protos.items():
            if not 0 < len(proto) < 63:
                continue
            proto_name = _label("_" + proto) + name
            yield proto_name, Node()
            for port in ports:
                if not 0 < len(port) < 63:
                    continue
                owner = _label("_" + port) + proto_name
                srv, extra = port_srv(port, proto, owner)
                if srv:
                    yield owner, Node(positive(owner, {SRV: srv}, {SRV: extra}))

    def _srv(
        self,
        pairs: Sequence[tuple[str | None, int | None]],
        name: bytes,
        by_host: dict[str, list[str]],
        own_ips: list[str],
        owner: bytes,
    ) -> tuple[list[bytes], list[bytes]]:
        """SRV records (priority 0, weight floor(100/n), at least 1, n after de-duplication)
        and the addresses of their targets for the additional section (RFC 2782).

        The targets are written in full (RFC 2782 forbids compressing them); each glue
        record's owner points at its target in the answer, whose place is fixed: the
        question (`owner`) is the same length in every query for this name."""
        unique = list(dict.fromkeys(pairs))
        if not unique:
            return [], []
        weight = max(1, 100 // len(unique))
        ttl = self.s.ttl
        wires = {h: (name if h is None else _host(h) + name) for h in dict.fromkeys(h for h, _ in unique)}
        target_at: dict[str | None, int]
        records, at, target_at = [], HEADER + len(owner) + 4, {}
        for h, port in unique:
            rec = E.rr(E.OWNER, _T_SRV, ttl, _SRV_HEAD.pack(0, weight, port or 0) + wires[h])
            target_at.setdefault(h, at + 18)  # owner pointer, type/class/TTL/length, priority/weight/port
            records.append(rec)
            at += len(rec)
        extra: list[bytes] = []
        for h, wire in wires.items():
            extra += glue(E.pointer(target_at[h]) or wire, own_ips if h is None else by_host.get(h, ()), ttl)
        return records, extra

    def _own_srv(
        self,
        ports: Sequence[int | None],
        name: bytes,
        packed: list[tuple[int, bytes]],
        owner: bytes,
        memo: dict[tuple[int, ...], list[bytes]],
    ) -> tuple[list[bytes], list[bytes]]:
        """`_srv` for a Service that is its own SRV target (not headless): the same
        records and glue, the records shared between the Service's names (`memo`: the
        Service's own SRV and a lone named port's are the same bytes)."""
        unique = tuple(dict.fromkeys(p or 0 for p in ports))
        if not unique:
            return [], []
        records = memo.get(unique)
        if records is None:
            ttl, weight = self.s.ttl, max(1, 100 // len(unique))
            records = memo[unique] = [
                E.rr(E.OWNER, _T_SRV, ttl, _SRV_HEAD.pack(0, weight, port) + name) for port in unique
            ]
        # the glue's owner: a pointer to the first record's target (its place is fixed)
        target = E.pointer(HEADER + len(owner) + 4 + 18) or name
        ttl = self.s.ttl
        return records, [E.rr(target, rtype, ttl, raw) for rtype, raw in packed]

    def _external_name(self, target: str) -> Node | None:
        try:
            ipaddress.ip_address(target)
            return None  # an IP is not a valid externalName target
        except ValueError:
            pass
        try:
            target_wire = to_wire(target)
        except (NameError_, UnicodeError):
            return None
        cname = E.make(answer=[E.rr(E.OWNER, RRType.CNAME, self.s.ttl, target_wire)], qtype=RRType.CNAME)
        return Node({CNAME: cname}, target=target_wire)

    # ------------------------------------------------------------------ fixed names
    def namespace(self, ns: str) -> Iterator[tuple[bytes, Node]]:
        """`<ns>.svc.<zone>` and, unless pods are disabled, `<ns>.pod.<zone>` (whose
        children, pod names, are computed from the name: not closed). A refused
        namespace has no svc name: it and every name below it are NXDOMAIN."""
        if not 0 < len(ns) < 64:
            return
        if self.refused is None or not self.refused(ns, self.zone):
            yield bytes((len(ns),)) + ns.encode() + self.svc_wire, Node()
        if self.s.pods != "disabled":
            yield bytes((len(ns),)) + ns.encode() + self.pod_wire, Node(closed=False)

    def fixed(self) -> Iterator[tuple[bytes, Node]]:
        """Names that exist in every cluster: the trees' empty non-terminals, dns-version."""
        yield self.svc_wire, Node()
        yield self.pod_wire, Node()
        yield self.wire("dns"), Node()
        owner = self.wire("dns-version")
        yield (
            owner,
            Node(
                {TXT: E.make(answer=[E.rr(E.OWNER, RRType.TXT, SCHEMA_TTL, E.txt(SCHEMA_VERSION))], qtype=RRType.TXT)}
            ),
        )

    def soa_rdata(self, serial: int) -> bytes:
        """SOA RDATA: ours as MNAME, hostmaster as RNAME, and the timers; only the serial moves."""
        return self._soa_names + _SOA_TAIL.pack(serial % 2**32, 7200, 1800, 86400, self.s.ttl)

    def soa_record(self, apex: int, serial: int) -> bytes:
        """The SOA of `apex`, owner in full: MINIMUM is `ttl`, the negative-caching TTL (RFC 2308 5)."""
        return E.rr(self.apex_wires[apex], RRType.SOA, min(self.s.ttl, 300), self.soa_rdata(serial))

    def apexes(self, serial: int, ns_ips: tuple[str, ...]) -> Iterator[tuple[bytes, Node]]:
        """The three apexes (SOA, NS with our addresses as glue) and `ns.dns.<zone>`."""
        ttl = self.s.ttl
        if self._ns is None or self._ns[0] != ns_ips:  # the NS side changes with kube-dns only
            # glue owned by a pointer to the NS target, right after the apex's own question
            ns_answers = [
                E.make(
                    answer=[E.rr(E.OWNER, RRType.NS, ttl, self.mname_wire)],
                    additional=glue(E.pointer(HEADER + len(wire) + 4 + 12) or self.mname_wire, ns_ips, ttl),
                    qtype=RRType.NS,
                )
                for wire in self.apex_wires
            ]
            self._ns = (ns_ips, ns_answers, Node(positive(self.mname_wire, address_records(ns_ips, ttl))))
        soa_rr = E.rr(E.OWNER, RRType.SOA, min(ttl, 300), self.soa_rdata(serial))
        for apex, wire in enumerate(self.apex_wires):
            soa = E.make(answer=[soa_rr], qtype=RRType.SOA)
            yield wire, Node({SOA: soa, NS: self._ns[1][apex]}, apex=apex, closed=apex == CLUSTER)
        yield self.mname_wire, self._ns[2]

    # ------------------------------------------------------------------ reverse zones
    def ptr(self, names: list[bytes], apex: int) -> Node | bytes:
        """The PTR name of one address: the names (wire form) that point at it."""
        ttl = self.s.ttl
        if len(names) == 1:
            return E.rr(E.OWNER, _T_PTR, ttl, names[0])
        return leaf({PTR: [E.rr(E.OWNER, _T_PTR, ttl, n) for n in dict.fromkeys(names)]}, apex)


@lru_cache(maxsize=4096)
def _label(label: str) -> bytes:
    """One label in wire form (the same namespaces and service names recur)."""
    raw = label.encode()
    return bytes((len(raw),)) + raw


def _host(label: str) -> bytes:
    """An endpoint's label in wire form (each is used once: not cached)."""
    raw = label.encode()
    return bytes((len(raw),)) + raw


_NIBBLES = [bytes((1, c)) for c in b"0123456789abcdef"]
_OCTET = {str(i): _host(str(i)) for i in range(256)}


def reverse_wire(ip: str) -> tuple[bytes, int]:
    """The canonical reverse name of an address in wire form, and its apex."""
    if ":" in ip:
        raw = socket.inet_pton(socket.AF_INET6, ip)
        nib = b"".join(_NIBBLES[b & 15] + _NIBBLES[b >> 4] for b in reversed(raw))
        return nib + b"\x03ip6\x04arpa\x00", IP6
    a, b, c, d = ip.split(".")  # canonical: objects.py normalises every address
    return _OCTET[d] + _OCTET[c] + _OCTET[b] + _OCTET[a] + b"\x07in-addr\x04arpa\x00", IN_ADDR


def address_value(ip: str) -> int:
    """An address as an int (the sorted lists of reverse-tree prefixes)."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    return int.from_bytes(socket.inet_pton(family, ip), "big")


__all__ = ["Compiler", "Entry", "Node", "ZoneSettings", "address_value", "leaf", "leaf_node", "qtc", "reverse_wire"]
