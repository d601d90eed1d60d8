"""Today's cluster answers, frozen as a test oracle for the compiled zone that replaces them.

A copy of the rules in clusterdns/zones/kubernetes.py (names, NXDOMAIN versus NODATA,
SRV and additionals, ExternalName chase, PTR, pods, apex) and of the answer assembly in
server/handler.py and wire/message.py (parse, FORMERR, BADVERS, REFUSED, RFC 8482 ANY,
CH TXT id.server, EDNS echo, UDP truncation). No answer table, no forwarding, no
metrics. It reads `ClusterStore` directly and renders with dnslib, as today's code does,
and imports nothing from clusterdns.zones, .wire or .server: those are being rewritten.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from dnslib import (
    AAAA as RD_AAAA,
    CNAME as RD_CNAME,
    NS as RD_NS,
    PTR as RD_PTR,
    RR,
    SOA as RD_SOA,
    SRV as RD_SRV,
    TXT as RD_TXT,
    A as RD_A,
    DNSHeader,
    DNSLabel,
    DNSQuestion,
    DNSRecord,
)

from clusterdns.kube.objects import Port
from clusterdns.kube.store import ClusterStore, ServiceView

A, NS, CNAME, SOA, PTR, TXT, AAAA, SRV, OPT = 1, 2, 5, 6, 12, 16, 28, 33, 41
IXFR, AXFR, ANY = 251, 252, 255
IN, CH = 1, 3
NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED, BADVERS = 0, 1, 2, 3, 4, 5, 16

SCHEMA_VERSION, SCHEMA_TTL = "1.1.0", 28800
REVERSE_ZONES = ("in-addr.arpa", "ip6.arpa")
MAX_CHASE = 8
ANY_ORDER = (A, AAAA, SRV, PTR, TXT, SOA, NS)  # RFC 8482: the first RRset that exists
IDENTITY_NAMES = ("id.server", "hostname.bind")
HEADER, CLASSIC_UDP, EDNS_UDP = 12, 512, 1232


class Rec(NamedTuple):
    """One record; `name` lowercase without the final dot. SRV data is (prio, weight, port,
    target), SOA data (mname, rname, serial, refresh, retry, expire, minimum)."""

    name: str
    rtype: int
    ttl: int
    data: Any
    rclass: int = IN


@dataclass
class Node:
    """What exists at a name: RRsets by type, or a CNAME. No node means NXDOMAIN."""

    rrsets: dict[int, list[Rec]] = field(default_factory=dict)
    cname: Rec | None = None


@dataclass
class Reply:
    rcode: int = NOERROR
    answer: list[Rec] = field(default_factory=list)
    authority: list[Rec] = field(default_factory=list)
    additional: list[Rec] = field(default_factory=list)
    aa: bool = True


def _family(ip: str) -> int:
    return AAAA if ":" in ip else A


# ---------------------------------------------------------------------------- the zone
class Zone:
    """The Kubernetes DNS names of `zone` and the reverse zones, read from the store."""

    def __init__(self, store: ClusterStore, zone: str, ttl: int, pods: str,
                 ignore_empty_service: bool, ns_addresses: tuple[str, ...]) -> None:
        self.store, self.ttl, self.pods = store, ttl, pods
        self.zone = zone.lower().strip(".")
        self.suffix = "." + self.zone
        self.ignore_empty_service = ignore_empty_service
        self.ns_addresses = ns_addresses
        self.mname = f"ns.dns.{self.zone}"

    def apex_of(self, name: str) -> str | None:
        for apex in (self.zone, *REVERSE_ZONES):
            if name == apex or name.endswith("." + apex):
                return apex
        return None

    def answer(self, name: str, qtype: int) -> Reply:
        reply = Reply()
        self._resolve(name, qtype, reply, set())
        return reply

    def _resolve(self, name: str, qtype: int, reply: Reply, seen: set[str]) -> None:
        seen.add(name)
        node = self._node(name)
        if node is None:
            reply.rcode = NXDOMAIN if self.store.synced else SERVFAIL
            reply.authority = [self._soa(self.apex_of(name) or self.zone)]
            return
        if node.cname is not None:
            reply.answer.append(node.cname)
            target = node.cname.data
            if qtype != CNAME and self.apex_of(target) is not None and target not in seen \
                    and len(seen) <= MAX_CHASE:
                self._resolve(target, qtype, reply, seen)
            return
        rrs = node.rrsets.get(qtype)
        if qtype == ANY:
            rrs = next((node.rrsets[t] for t in ANY_ORDER if node.rrsets.get(t)), None)
        if not rrs:  # NODATA
            reply.authority = [self._soa(self.apex_of(name) or self.zone)]
            return
        reply.answer.extend(rrs)
        if rrs[0].rtype in (SRV, NS):
            done: set[str] = set()
            for rec in rrs:
                target = rec.data[3] if rec.rtype == SRV else rec.data
                if target in done:
                    continue
                done.add(target)
                at = self._node(target)
                if at is not None:
                    reply.additional.extend(at.rrsets.get(A, ()))
                    reply.additional.extend(at.rrsets.get(AAAA, ()))

    def _soa(self, apex: str) -> Rec:
        data = (self.mname, f"hostmaster.{self.zone}", self.store.serial % 2**32, 7200, 1800, 86400, self.ttl)
        return Rec(apex, SOA, min(self.ttl, 300), data)

    # --------------------------------------------------------------- name grammar
    def _node(self, name: str) -> Node | None:
        if name == self.zone:
            return self._apex(name)
        if name.endswith(self.suffix):
            labels = name[: -len(self.suffix)].split(".")
            top, rest = labels[-1], labels[:-1]
            if top == "svc":
                return self._svc_tree(name, rest)
            if top == "pod":
                return self._pod_tree(name, rest)
            if top == "dns-version" and not rest:
                return Node({TXT: [Rec(name, TXT, SCHEMA_TTL, SCHEMA_VERSION)]})
            if top == "dns" and not rest:
                return Node()
            if top == "dns" and rest == ["ns"]:
                view = self.store.view("kube-system", "kube-dns")
                own = view.service.cluster_ips if view is not None and view.service.cluster_ips else self.ns_addresses
                return self._addresses(name, own)
            return None
        for apex in REVERSE_ZONES:
            if name == apex:
                return self._apex(name)
            if name.endswith("." + apex):
                return self._ptr_node(name, apex)
        return None

    def _apex(self, name: str) -> Node:
        return Node({SOA: [self._soa(name)], NS: [Rec(name, NS, self.ttl, self.mname)]})

    def _addresses(self, name: str, ips: tuple[str, ...] | list[str]) -> Node:
        node = Node()
        for ip in dict.fromkeys(ips):
            node.rrsets.setdefault(_family(ip), []).append(Rec(name, _family(ip), self.ttl, ip))
        return node

    # --------------------------------------------------------------- <...>.svc.<zone>
    def _svc_tree(self, name: str, labels: list[str]) -> Node | None:
        if not labels:
            return Node()
        if len(labels) == 1:
            return Node() if self.store.namespace_exists(labels[0]) else None
        view = self.store.view(labels[-1], labels[-2])
        if view is None:
            return None
        if len(labels) == 2:
            return self._service_node(name, view)
        if view.service.external_name is not None or (view.service.headless and not view.backends):
            return None
        if len(labels) == 3:
            if labels[0].startswith("_"):  # _proto: an empty non-terminal
                return Node() if any(p.protocol == labels[0][1:] for p in self._named_ports(view)) else None
            ips = [b.ip for b in view.backends if b.host == labels[0]]
            return self._addresses(name, ips) if ips else None
        if len(labels) == 4 and labels[0].startswith("_") and labels[1].startswith("_"):
            port, proto = labels[0][1:], labels[1][1:]
            if view.service.headless:
                pairs = [(self._fqdn(view, b.host), p.port) for b in view.backends for p in b.ports
                         if p.name == port and p.protocol == proto and p.port]
            else:
                pairs = [(self._fqdn(view), p.port) for p in view.service.ports
                         if p.name == port and p.protocol == proto and p.port]
            srv = self._srv(name, pairs)
            return Node({SRV: srv}) if srv else None
        return None

    def _fqdn(self, view: ServiceView, host: str | None = None) -> str:
        base = f"{view.service.name}.{view.service.namespace}.svc.{self.zone}"
        return f"{host}.{base}" if host else base

    def _service_node(self, name: str, view: ServiceView) -> Node | None:
        s = view.service
        if s.external_name is not None:
            try:
                ipaddress.ip_address(s.external_name)
                return None
            except ValueError:
                return Node(cname=Rec(name, CNAME, self.ttl, s.external_name))
        if s.headless:
            if not view.backends:
                return None
            node = self._addresses(name, [b.ip for b in view.backends])
            pairs = [(self._fqdn(view, b.host), p.port) for b in view.backends for p in b.ports if p.port]
        else:
            if self.ignore_empty_service and not view.backends:
                return None
            node = self._addresses(name, s.cluster_ips)
            pairs = [(name, p.port) for p in s.ports if p.port]
        srv = self._srv(name, pairs)
        if srv:
            node.rrsets[SRV] = srv
        return node

    @staticmethod
    def _named_ports(view: ServiceView) -> list[Port]:
        if view.service.headless:
            return [p for b in view.backends for p in b.ports if p.name and p.port]
        return [p for p in view.service.ports if p.name and p.port]

    def _srv(self, name: str, pairs: list[tuple[str, int | None]]) -> list[Rec]:
        """Priority 0, weight floor(100/n) but at least 1, n after de-duplication."""
        unique = list(dict.fromkeys(pairs))
        weight = max(1, 100 // len(unique)) if unique else 0
        return [Rec(name, SRV, self.ttl, (0, weight, port, target)) for target, port in unique]

    # --------------------------------------------------------------- <...>.pod.<zone>
    def _pod_tree(self, name: str, labels: list[str]) -> Node | None:
        if not labels:
            return Node()
        if self.pods == "disabled" or len(labels) > 2 or not self.store.namespace_exists(labels[-1]):
            return None
        if len(labels) == 1:
            return Node()
        ip = _pod_label_ip(labels[0])
        if ip is None or (self.pods == "verified" and not self.store.pod_has_ip(labels[-1], ip)):
            return None
        return self._addresses(name, [ip])

    # --------------------------------------------------------------- reverse zones
    def _ptr_node(self, name: str, apex: str) -> Node | None:
        net = _reverse_network(name[: -len(apex) - 1].split("."), apex)
        if net is None:
            return None
        if net.prefixlen < net.max_prefixlen:  # partial: an empty non-terminal?
            return Node() if any(ipaddress.ip_address(ip) in net for ip in self.store.ptr) else None
        targets = self.store.ptr_targets(str(net.network_address))
        if not targets:
            return None
        services = [t for t in targets if t.host is None]  # a ClusterIP names only its Service
        names = [f"{t.host + '.' if t.host else ''}{t.service}.{t.namespace}.svc.{self.zone}"
                 for t in (services or targets)]
        return Node({PTR: [Rec(name, PTR, self.ttl, n) for n in dict.fromkeys(names)]})


def _pod_label_ip(label: str) -> str | None:
    """`1-2-3-4` is IPv4 (three dashes, no `--`); anything else is read as IPv6."""
    try:
        if label.count("-") == 3 and "--" not in label:
            return str(ipaddress.IPv4Address(label.replace("-", ".")))
        return str(ipaddress.IPv6Address(label.replace("-", ":")))
    except ValueError:
        return None


def _reverse_network(labels: list[str], apex: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    labels = labels[::-1]
    try:
        if apex == "in-addr.arpa":
            if len(labels) > 4 or not all(lab.isdigit() and len(lab) <= 3 and int(lab) < 256 for lab in labels):
                return None
            octets = [int(lab) for lab in labels] + [0] * (4 - len(labels))
            return ipaddress.IPv4Network((bytes(octets), 8 * len(labels)))
        if len(labels) > 32 or not all(len(lab) == 1 and lab in "0123456789abcdef" for lab in labels):
            return None
        return ipaddress.IPv6Network((int("".join(labels).ljust(32, "0"), 16), 4 * len(labels)))
    except ValueError:
        return None


# ---------------------------------------------------------------------------- the wire
class FormError(ValueError):
    pass


@dataclass
class Query:
    raw: bytes
    id: int
    rd: bool
    cd: bool
    labels: tuple[bytes, ...]
    name: str  # lowercased, no final dot
    qtype: int
    qclass: int
    edns: tuple[int, int, bool] | None  # (udp size, version, DO)
    question_end: int
    plain: bool  # no compression pointer in the question name


def _question_end(data: bytes) -> tuple[int, bool]:
    i, total = HEADER, 0
    while True:
        if i >= len(data):
            raise FormError("question name runs past the packet")
        ln = data[i]
        if ln == 0:
            i += 1
            break
        if ln & 0xC0 == 0xC0:
            return _checked_end(data, i + 2), False
        if ln > 63:
            raise FormError("label longer than 63 bytes")
        total += ln + 1
        if total > 254:
            raise FormError("name longer than 255 bytes")
        i += ln + 1
    return _checked_end(data, i), True


def _checked_end(data: bytes, i: int) -> int:
    if i + 4 > len(data):
        raise FormError("question type and class missing")
    return i + 4


def parse(data: bytes) -> Query:
    try:
        rec = DNSRecord.parse(data)
    except Exception as exc:  # noqa: BLE001 - dnslib raises DNSError and, on odd input, others
        raise FormError(str(exc)) from None
    if len(rec.questions) != 1:
        raise FormError("QDCOUNT is not 1")
    q = rec.questions[0]
    opts = [rr for rr in rec.ar if rr.rtype == OPT]
    if len(opts) > 1 or (opts and len(opts[0].rname.label) != 0):
        raise FormError("more than one OPT, or an OPT not owned by the root")
    edns = (opts[0].rclass, (opts[0].ttl >> 16) & 0xFF, bool(opts[0].ttl & 0x8000)) if opts else None
    try:
        text = ".".join(lab.decode("ascii") for lab in q.qname.label)
    except UnicodeDecodeError:
        text = ".".join(lab.decode("latin-1") for lab in q.qname.label)
    end, plain = _question_end(data)
    return Query(data, rec.header.id, bool(rec.header.rd), bool(rec.header.cd), tuple(q.qname.label),
                 text.lower(), q.qtype, q.qclass, edns, end, plain)


def header_reply(data: bytes, rcode: int) -> bytes:
    """FORMERR, NOTIMP, SERVFAIL from the header alone: QR, opcode and RD copied."""
    return data[:2] + struct.pack("!HHHHH", 0x8000 | (data[2] & 0x79) << 8 | rcode, 0, 0, 0, 0)


def _rdata(rec: Rec) -> Any:
    t, d = rec.rtype, rec.data
    if t in (CNAME, PTR, NS):
        return {CNAME: RD_CNAME, PTR: RD_PTR, NS: RD_NS}[t](d + ".")
    if t == SRV:
        return RD_SRV(d[0], d[1], d[2], d[3] + ".")
    if t == SOA:
        return RD_SOA(d[0] + ".", d[1] + ".", d[2:])
    return {A: RD_A, AAAA: RD_AAAA, TXT: RD_TXT}[t](d)


def _pack(q: Query, reply: Reply, answer: list[Rec], authority: list[Rec], additional: list[Rec],
          tc: bool) -> bytes:
    labels = tuple(lab.lower() for lab in q.labels) if q.plain else q.labels
    hdr = DNSHeader(id=q.id, qr=1, opcode=0, aa=int(reply.aa), tc=int(tc), rd=int(q.rd), ra=0,
                    rcode=reply.rcode & 0xF)
    hdr.cd = int(q.cd)
    msg = DNSRecord(hdr, q=DNSQuestion(DNSLabel(labels), q.qtype, q.qclass))
    for section, recs in ((msg.rr, answer), (msg.auth, authority), (msg.ar, additional)):
        section.extend(RR(r.name + ".", r.rtype, rclass=r.rclass, ttl=r.ttl, rdata=_rdata(r)) for r in recs)
    wire = bytes(msg.pack())
    if q.edns is not None:  # echo an OPT: our size, the extended rcode, DO copied, no options
        ttl = ((reply.rcode >> 4) & 0xFF) << 24 | (0x8000 if q.edns[2] else 0)
        wire = wire[:10] + struct.pack("!H", len(additional) + 1) + wire[12:]
        wire += b"\x00" + struct.pack("!HHIH", OPT, EDNS_UDP, ttl, 0)
    if q.plain:  # the client's own question bytes back, case included (0x20)
        wire = wire[:HEADER] + q.raw[HEADER:q.question_end] + wire[q.question_end:]
    return wire


def udp_limit(q: Query, max_udp: int) -> int:
    return CLASSIC_UDP if q.edns is None else max(CLASSIC_UDP, min(q.edns[0], max_udp))


def render(q: Query, reply: Reply, limit: int | None) -> bytes:
    """Over `limit`: the additional section goes (no TC), then whole answer RRsets from
    the end, with TC and no authority."""
    wire = _pack(q, reply, reply.answer, reply.authority, reply.additional, False)
    if limit is None or len(wire) <= limit:
        return wire
    wire = _pack(q, reply, reply.answer, reply.authority, [], False)
    if len(wire) <= limit:
        return wire
    sets: list[list[Rec]] = []
    for rec in reply.answer:
        if sets and (sets[-1][0].name, sets[-1][0].rtype) == (rec.name, rec.rtype):
            sets[-1].append(rec)
        else:
            sets.append([rec])
    while sets:
        sets.pop()
        wire = _pack(q, reply, [r for s in sets for r in s], [], [], True)
        if len(wire) <= limit:
            return wire
    return _pack(q, reply, [], [], [], True)


def _answer(zone: Zone, q: Query) -> Reply:
    if q.qtype == OPT:
        return Reply(rcode=FORMERR, aa=False)
    if q.qclass == CH and q.name in IDENTITY_NAMES and q.qtype in (TXT, ANY):
        return Reply(answer=[Rec(q.name, TXT, 0, f"{socket.gethostname()}/{os.getpid()}", CH)])
    if q.qclass != IN or q.qtype in (AXFR, IXFR) or zone.apex_of(q.name) is None:
        return Reply(rcode=REFUSED, aa=False)
    return zone.answer(q.name, q.qtype)


def oracle_answer(store: ClusterStore, query_bytes: bytes, *, tcp: bool, zone: str = "cluster.local",
                  ttl: int = 5, pods: str = "insecure", ignore_empty_service: bool = False,
                  ns_addresses: tuple[str, ...] = (), max_udp: int = 1232) -> bytes | None:
    """Today's reply to `query_bytes`; None where today's server sends nothing."""
    data = query_bytes
    if len(data) < HEADER or data[2] & 0x80:
        return None
    try:
        if (data[2] >> 3) & 0xF:
            return header_reply(data, NOTIMP)
        try:
            q = parse(data)
        except FormError:
            return header_reply(data, FORMERR)
        if q.edns is not None and q.edns[1] > 0:
            return render(q, Reply(rcode=BADVERS, aa=False), None)
        reply = _answer(Zone(store, zone, ttl, pods, ignore_empty_service, ns_addresses), q)
        return render(q, reply, None if tcp else udp_limit(q, max_udp))
    except Exception:  # noqa: BLE001 - today's handler: a bug costs one answer, as SERVFAIL
        return header_reply(data, SERVFAIL)
