"""Hypothesis strategies: random clusters, random changes to them, questions about them.

Objects are drawn as API dicts and decoded with `parse_object`, so they are shaped as the
store really gets them (lowercased names, canonical addresses, unset `ready`). Names and
addresses come from small pools so that objects collide as in real clusters: an address
behind two Services, a slice replaced by another, an ExternalName aimed at a Service
that comes and goes. That is where zone logic breaks.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import dns.edns
import dns.flags
import dns.message
import dns.name
from hypothesis import strategies as st

from clusterdns.kube.objects import (
    Endpoints,
    EndpointSlice,
    KubeObject,
    Namespace,
    Pod,
    Service,
    endpoint as as_endpoint,
    parse_object,
)
from clusterdns.kube.store import ClusterStore, dashed

NAMESPACES = ("default", "team", "kube-system", "prod")
SERVICES = ("web", "db", "alias", "kube-dns", "api")
HOSTS = ("web-0", "web-1", "db-0", "Web-0", "x")
PORT_NAMES = ("", "http", "dns", "grpc")
PROTOCOLS = ("TCP", "UDP", "SCTP", None)  # None: the API default, TCP
POD_NAMES = ("p0", "p1", "p2")
V4 = ("10.96.0.1", "10.96.0.10", "10.244.0.1", "10.244.0.2", "10.244.1.1", "192.0.2.1")
V6 = ("fd00::1", "fd00::a", "fd00:10::1", "fd00::", "2001:db8::1:0:0:1", "::1")
SVC_LABEL = "kubernetes.io/service-name"
T = TypeVar("T")

A, NS, CNAME, SOA, PTR, TXT, AAAA, SRV, OPT = 1, 2, 5, 6, 12, 16, 28, 33, 41
COMMON_TYPES = (A, AAAA, SRV, PTR, 255, CNAME, SOA, NS, TXT)
# MX HINFO NULL DS DNSKEY, unknown ones, OPT (not a question), AXFR IXFR (refused)
RARE_TYPES = (15, 13, 10, 43, 48, 1000, 65280, 65535, 0, OPT, 252, 251)
IN, CH = 1, 3


def pick(draw: st.DrawFn, items: Sequence[T]) -> T:
    """One of `items`, near uniformly: Hypothesis favours small indices (the first items)
    in a short range; and cheaper than a fresh `sampled_from` for lists made per draw."""
    return items[draw(st.integers(0, 2**16 - 1)) % len(items)]


def _zone(zone: str) -> str:
    return zone.lower().strip(".")


@functools.cache
def ipv4() -> st.SearchStrategy[str]:
    """Mostly a small shared pool: one address then serves a ClusterIP, endpoints, pods."""
    pool = st.sampled_from(V4)
    return st.one_of(pool, pool, pool, st.integers(1, 254).map(lambda i: f"10.244.9.{i}"))


@functools.cache
def ipv6() -> st.SearchStrategy[str]:
    pool = st.sampled_from(V6)
    return st.one_of(pool, pool, pool, st.integers(1, 0xFFFF).map(lambda i: f"fd00:9::{i:x}"))


# ---------------------------------------------------------------------------- objects
# (strategy factories are cached: building a strategy costs more than drawing from it)
@functools.cache
@st.composite
def ports(draw: st.DrawFn, numbered: bool, max_size: int = 3) -> list[dict[str, Any]]:
    """Named and unnamed, TCP/UDP/SCTP; without a number on slices ("all ports": no SRV)."""
    out = []
    for _ in range(draw(st.integers(0, max_size))):
        p: dict[str, Any] = {}
        name, proto = draw(st.sampled_from(PORT_NAMES)), draw(st.sampled_from(PROTOCOLS))
        if name:
            p["name"] = name
        if proto:
            p["protocol"] = proto
        if numbered or draw(st.integers(0, 4)):
            p["port"] = draw(st.sampled_from((53, 80, 443, 8080)))
        out.append(p)
    return out


@functools.lru_cache(maxsize=256)
def external_targets(zone: str, peers: tuple[tuple[str, str], ...] = ()) -> st.SearchStrategy[str]:
    """Outside the zone, another Service (chains, loops, itself; often one of `peers`, the
    cluster's own), a missing name, other names of the zone, a reverse name, and an IP
    (not a valid target)."""
    z = _zone(zone)
    ours = [st.sampled_from(tuple(f"{name}.{ns}.svc.{z}" for ns, name in peers))] * 2 if peers else []
    return st.one_of(
        *ours,
        st.sampled_from(("db.example.com", "Example.ORG.", "api.example.net")),
        st.builds(lambda s, n: f"{s}.{n}.svc.{z}", st.sampled_from(SERVICES), st.sampled_from(NAMESPACES)),
        st.sampled_from((f"missing.default.svc.{z}", z, f"dns-version.{z}", f"ns.dns.{z}",
                         f"10-244-0-1.default.pod.{z}", f"_http._tcp.web.default.svc.{z}",
                         f"WEB.Default.SVC.{z.upper()}.", "1.0.244.10.in-addr.arpa")),
        st.sampled_from(("10.96.0.1", "fd00::1", "::ffff:10.0.0.1")),
    )


@st.composite
def service(draw: st.DrawFn, zone: str, ns: str | None = None, name: str | None = None,
            peers: tuple[tuple[str, str], ...] = ()) -> dict[str, Any]:
    """ClusterIP (v4, v6, dual either order, not yet allocated), headless, ExternalName."""
    ns = ns or draw(st.sampled_from(NAMESPACES))
    name = name or draw(st.sampled_from(SERVICES))
    meta: dict[str, Any] = {"name": name, "namespace": ns}
    shape = draw(st.sampled_from(("v4", "v6", "dual", "dual6", "headless", "headless", "external", "external",
                                  "unallocated")))
    if shape == "external":
        spec: dict[str, Any] = {"type": "ExternalName", "externalName": draw(external_targets(zone, peers))}
        spec["ports"] = draw(ports(numbered=False, max_size=1))
    else:
        ips = {"v4": [draw(ipv4())], "v6": [draw(ipv6())], "dual": [draw(ipv4()), draw(ipv6())],
               "dual6": [draw(ipv6()), draw(ipv4())], "headless": ["None"], "unallocated": [""]}[shape]
        spec = {"type": "ClusterIP", "ports": draw(ports(numbered=True))}
        if len(ips) == 1 and draw(st.booleans()):
            spec["clusterIP"] = ips[0]
        else:
            spec["clusterIPs"] = ips
    if draw(st.integers(0, 3)) == 0:
        spec["publishNotReadyAddresses"] = True
    elif draw(st.integers(0, 7)) == 0:
        meta["annotations"] = {"service.alpha.kubernetes.io/tolerate-unready-endpoints": "true"}
    return {"apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": spec}


@st.composite
def alias_chain(draw: st.DrawFn, zone: str, peers: tuple[tuple[str, str], ...]) -> list[dict[str, Any]]:
    """ExternalNames hop0 -> hop1 -> ... (1 to 10 hops: past the chase limit of 8), ending
    at one of the cluster's Services, a missing name, outside, an IP, or back at hop0."""
    z = _zone(zone)
    n = draw(st.integers(1, 10))
    ends = [f"missing.prod.svc.{z}", "db.example.com", "10.96.0.1", f"hop0.prod.svc.{z}"]
    end = pick(draw, [f"{name}.{ns}.svc.{z}" for ns, name in peers] * 2 + ends)
    targets = [f"hop{i + 1}.prod.svc.{z}" for i in range(n - 1)] + [end]
    return [{"apiVersion": "v1", "kind": "Service", "metadata": {"name": f"hop{i}", "namespace": "prod"},
             "spec": {"type": "ExternalName", "externalName": t}} for i, t in enumerate(targets)]


@functools.cache
def endpoints(v6: bool, big: bool) -> st.SearchStrategy[list[dict[str, Any]]]:
    """A slice's endpoints: usually a few, sometimes many (answers that fill a UDP reply)."""
    return st.lists(endpoint(ipv6() if v6 else ipv4()), min_size=12 if big else 0, max_size=40 if big else 4)


@functools.cache
@st.composite
def endpoint(draw: st.DrawFn, address: st.SearchStrategy[str]) -> dict[str, Any]:
    """Ready, not ready, or ready unset (which means ready); with or without a hostname."""
    ep: dict[str, Any] = {"addresses": draw(st.lists(address, min_size=1, max_size=2))}
    cond = draw(st.sampled_from(({"ready": True}, {"ready": False}, {}, None, {"ready": True, "serving": True})))
    if cond is not None:
        ep["conditions"] = cond
    host = draw(st.one_of(st.none(), st.sampled_from(HOSTS)))
    if host:
        ep["hostname"] = host
    if draw(st.integers(0, 2)) == 0:
        ep["targetRef"] = {"kind": "Pod", "name": draw(st.sampled_from(POD_NAMES + ("Pod-" + "q" * 60,)))}
    return ep


@st.composite
def endpoint_slice(draw: st.DrawFn, ns: str | None = None, svc: str | None = None) -> dict[str, Any]:
    """An IPv4 or IPv6 slice; sometimes large, sometimes for no or another Service."""
    ns = ns or draw(st.sampled_from(NAMESPACES))
    svc = svc or draw(st.sampled_from(SERVICES))
    v6 = draw(st.booleans())
    eps = draw(endpoints(v6, big=draw(st.integers(0, 9)) == 0))
    labels = {SVC_LABEL: svc}
    owner = draw(st.integers(0, 9))
    if owner == 0:
        labels = {}
    elif owner == 1:
        labels[SVC_LABEL] = draw(st.sampled_from(SERVICES))
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"{svc}-{draw(st.sampled_from('abc'))}", "namespace": ns, "labels": labels},
            "addressType": "IPv6" if v6 else "IPv4", "endpoints": eps or draw(st.sampled_from((None, []))),
            "ports": draw(ports(numbered=False))}


@st.composite
def endpoints_v1(draw: st.DrawFn, ns: str | None = None, svc: str | None = None) -> dict[str, Any]:
    """Legacy v1 Endpoints: used only for a Service without slices."""
    ns = ns or draw(st.sampled_from(NAMESPACES))
    svc = svc or draw(st.sampled_from(SERVICES))

    def address() -> st.SearchStrategy[dict[str, Any]]:
        return st.builds(lambda ip, h: {"ip": ip, **({"hostname": h} if h else {})},
                         st.one_of(ipv4(), ipv6()), st.one_of(st.none(), st.sampled_from(HOSTS)))

    subsets = draw(st.lists(st.fixed_dictionaries(
        {"addresses": st.lists(address(), max_size=3), "ports": ports(numbered=True, max_size=2)},
        optional={"notReadyAddresses": st.lists(address(), max_size=2)}), max_size=2))
    return {"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": svc, "namespace": ns}, "subsets": subsets}


@st.composite
def pod(draw: st.DrawFn) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": draw(st.sampled_from(POD_NAMES)), "namespace": draw(st.sampled_from(NAMESPACES))}
    if draw(st.integers(0, 3)) == 0:
        meta["deletionTimestamp"] = "2024-01-01T00:00:00Z"
    ips = draw(st.lists(st.one_of(ipv4(), ipv6()), max_size=2, unique=True))
    status: dict[str, Any] = {"podIPs": [{"ip": ip} for ip in ips]}
    if len(ips) == 1 and draw(st.booleans()):
        status = {"podIP": ips[0]}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "status": status}


def namespace(names: Iterable[str] = NAMESPACES + ("empty",)) -> st.SearchStrategy[dict[str, Any]]:
    return st.sampled_from(tuple(names)).map(
        lambda n: {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n}})


def _decode(docs: Iterable[dict[str, Any]]) -> list[KubeObject]:
    return [o for o in map(parse_object, docs) if o is not None]


@st.composite
def clusters(draw: st.DrawFn, zone: str) -> list[KubeObject]:
    """Namespaces, 1-6 Services each with 0-2 slices (sometimes v1 Endpoints), sometimes a
    chain of ExternalNames, stray slices, Pods."""
    docs = draw(st.lists(namespace(), max_size=3))
    keys = tuple(draw(st.lists(st.tuples(st.sampled_from(NAMESPACES), st.sampled_from(SERVICES)),
                               unique=True, min_size=1, max_size=6)))
    for ns, name in keys:
        docs.append(draw(service(zone, ns, name, keys)))
        docs += draw(st.lists(endpoint_slice(ns, name), max_size=2))
        if draw(st.integers(0, 7)) == 0:
            docs.append(draw(endpoints_v1(ns, name)))
    if draw(st.integers(0, 2)) == 0:
        docs += draw(alias_chain(zone, keys))
    docs += draw(st.lists(endpoint_slice(), max_size=1))
    docs += draw(st.lists(pod(), max_size=4))
    return _decode(docs)


# ---------------------------------------------------------------------------- changes
Change = tuple  # ("upsert", obj) | ("delete", kind, ns, name) | ("replace", kind, [obj, ...])
KINDS = ("Service", "EndpointSlice", "Endpoints", "Pod", "Namespace")


def kind_of(obj: KubeObject) -> str:
    return type(obj).__name__


def key_of(obj: KubeObject) -> tuple[str, str, str]:
    return (kind_of(obj), "" if isinstance(obj, Namespace) else obj.namespace, obj.name)


def kube_doc(zone: str, kind: str) -> st.SearchStrategy[dict[str, Any]]:
    return {"Service": service(zone), "EndpointSlice": endpoint_slice(), "Endpoints": endpoints_v1(),
            "Pod": pod(), "Namespace": namespace()}[kind]


@st.composite
def changes(draw: st.DrawFn, zone: str, objs: list[KubeObject], max_size: int = 6) -> list[Change]:
    """Upserts (new objects or new versions of existing ones), deletes (existing or not),
    and re-lists of one kind that keep some objects and bring new ones."""
    out: list[Change] = []
    keys = [key_of(o) for o in objs]
    for _ in range(draw(st.integers(0, max_size))):
        op = draw(st.sampled_from(("upsert", "upsert", "delete", "replace")))
        kind = draw(st.sampled_from(KINDS))
        if op == "upsert":
            out.extend(("upsert", o) for o in _decode([draw(kube_doc(zone, kind))]))
        elif op == "delete":
            if keys and draw(st.integers(0, 3)):
                out.append(("delete", *draw(st.sampled_from(keys))))
            else:
                out.append(("delete", kind, draw(st.sampled_from(NAMESPACES)), draw(st.sampled_from(SERVICES))))
        else:
            same = [o for o in objs if kind_of(o) == kind]
            keep = [o for o in same if draw(st.booleans())]
            fresh = _decode(draw(st.lists(kube_doc(zone, kind), max_size=3)))
            out.append(("replace", kind, keep + fresh))
    return out


def apply_change(store: ClusterStore, change: Change) -> None:
    op, *args = change
    getattr(store, op)(*args)


def objects_of(store: ClusterStore) -> list[KubeObject]:
    """What the store holds now, as objects (to ask about the names after changes)."""
    return [*store.services.values(), *store.slices.values(), *store.endpoints.values(),
            *store.pods.values(), *map(Namespace, sorted(store.namespaces))]


# ---------------------------------------------------------------------------- questions
@dataclass(frozen=True)
class Question:
    """One query, readable in a failure report; `wire()` gives its bytes."""

    name: str
    qtype: int = A
    qclass: int = IN
    edns: int | None = None  # EDNS version, None: no OPT
    payload: int = 1232
    do: bool = False
    nsid: bool = False
    rd: bool = True
    cd: bool = False
    ad: bool = False
    id: int = 0
    mangle: tuple[str, int] | None = None
    kind: str = ""  # which kind of name it was drawn from (names_in)

    def wire(self) -> bytes:
        q = dns.message.make_query(self.name, self.qtype, self.qclass, use_edns=False)
        if self.edns is not None:
            q.use_edns(self.edns, dns.flags.DO if self.do else 0, self.payload,
                       options=[dns.edns.GenericOption(dns.edns.NSID, b"")] if self.nsid else None)
        q.id = self.id
        q.flags = (dns.flags.RD if self.rd else 0) | (dns.flags.CD if self.cd else 0) | (dns.flags.AD if self.ad else 0)
        return mangled(q.to_wire(), self.mangle, len(dns.name.from_text(self.name).to_wire()))


MANGLES = ("opcode", "qr", "short", "cut", "trailing", "qdcount0", "qdcount2", "two-opt", "tc")


def mangled(wire: bytes, how: tuple[str, int] | None, name_len: int) -> bytes:
    """Broken or unusual packets: today they get NOTIMP, FORMERR, silence, or an answer."""
    if how is None:
        return wire
    kind, n = how
    qend = 12 + name_len + 4
    if kind == "opcode":
        return wire[:2] + bytes([wire[2] | (n % 15 + 1) << 3]) + wire[3:]
    if kind == "qr":
        return wire[:2] + bytes([wire[2] | 0x80]) + wire[3:]
    if kind == "tc":
        return wire[:2] + bytes([wire[2] | 0x02]) + wire[3:]
    if kind == "short":
        return wire[: n % 12]
    if kind == "cut":
        return wire[: max(12, len(wire) - 1 - n % 8)]
    if kind == "trailing":
        return wire + b"\x00" * (n % 5 + 1)
    if kind == "qdcount0":
        return wire[:4] + b"\x00\x00" + wire[6:]
    if kind == "qdcount2":
        return wire[:4] + b"\x00\x02" + wire[6:qend] + wire[12:qend] + wire[qend:]
    if kind == "two-opt" and len(wire) > qend:  # the OPT record twice
        return wire[:10] + b"\x00\x02" + wire[12:] + wire[qend:]
    return wire


def _reverse_names(ip: str) -> list[str]:
    """The PTR name of `ip` and some of its parents (partial names: empty non-terminals)."""
    labels = ipaddress.ip_address(ip).reverse_pointer.split(".")
    cuts = (0, 1, 2, 3) if len(labels) == 6 else (0, 1, 2, 7, 16, 24, 30, 31)
    return [".".join(labels[k:]) for k in cuts]


def _family(ip: str) -> int:
    return AAAA if ":" in ip else A


Names = dict[str, tuple[tuple[str, tuple[int, ...]], ...]]  # kind -> ((name, types usually asked), ...)


def names_in(zone: str, objs: Iterable[KubeObject], extra_addresses: Iterable[str] = ()) -> Names:
    """Every name the cluster should have, by kind, each with the types a client would ask
    it for; plus the reverse names of all addresses (the cluster's and `extra_addresses`)
    and their parents (empty non-terminals). "pool" has every name the pools can make,
    there or not (NXDOMAIN versus NODATA). Some kinds pick out what is rare by chance:
    "headless" Services and their SRV names, "dual" names (A and AAAA), "reverse-shared"
    addresses (a ClusterIP that is also an endpoint), "alias" (every ExternalName)."""
    z = _zone(zone)
    named: dict[str, dict[str, set[int]]] = {}

    def add(kind: str, name: str, *types: int) -> None:
        named.setdefault(kind, {}).setdefault(name, set()).update(types)

    for apex in (z, "in-addr.arpa", "ip6.arpa"):
        add("apex", apex, SOA, NS, 255)
    for ns in (*NAMESPACES, "empty", "nosuch"):  # present or not: where NXDOMAIN begins
        add("pool", f"{ns}.svc.{z}", A)
        add("pool", f"{ns}.pod.{z}", A)
        for svc in SERVICES:
            add("pool", f"{svc}.{ns}.svc.{z}", A, AAAA, SRV)
        for ip in (*V4, *V6):
            add("pool", f"{ip.replace('.', '-').replace(':', '-')}.{ns}.pod.{z}", _family(ip))
    for name, types in ((f"svc.{z}", (A,)), (f"pod.{z}", (A,)), (f"dns-version.{z}", (TXT,)), (f"dns.{z}", (A,)),
                        (f"ns.dns.{z}", (A, AAAA, 255))):
        add("structure", name, *types)
    addresses = set(extra_addresses)
    cluster_ips: set[str] = set()
    endpoint_ips: set[str] = set()
    objs = list(objs)
    headless = {(o.namespace, o.name) for o in objs if isinstance(o, Service) and o.headless}
    aliases = {f"{o.name}.{o.namespace}.svc.{z}": o.external_name for o in objs
               if isinstance(o, Service) and o.external_name}
    for o in objs:
        namespace = o.name if isinstance(o, Namespace) else o.namespace
        add("namespace", f"{namespace}.svc.{z}", A)
        add("namespace", f"{namespace}.pod.{z}", A)
        if isinstance(o, Service):
            base = f"{o.name}.{o.namespace}.svc.{z}"
            add("service", base, SRV, 255, CNAME, *map(_family, o.cluster_ips or ("0.0.0.0",)))
            if o.headless:
                add("headless", base, SRV)
            for p in o.ports:
                add("srv", f"_{p.name or 'x'}._{p.protocol}.{base}", SRV)
                add("srv", f"_{p.protocol}.{base}", SRV)
            if o.external_name:
                add("target", o.external_name, A, CNAME)
            cluster_ips.update(o.cluster_ips)
        elif isinstance(o, Pod):
            for ip in o.ips:
                for text in (ip, ipaddress.ip_address(ip).exploded):
                    add("pod", f"{text.replace('.', '-').replace(':', '-')}.{o.namespace}.pod.{z}", _family(ip))
            addresses.update(o.ips)
        elif isinstance(o, (EndpointSlice, Endpoints)):
            for sl in (o.slices if isinstance(o, Endpoints) else (o,)):
                if not sl.service:
                    continue
                base = f"{sl.service}.{sl.namespace}.svc.{z}"
                for p in sl.ports:
                    add("srv", f"_{p.name or 'x'}._{p.protocol}.{base}", SRV)
                    add("srv", f"_{p.protocol}.{base}", SRV)
                    if (sl.namespace, sl.service) in headless:
                        add("headless", f"_{p.name or 'x'}._{p.protocol}.{base}", SRV)
                for ep in map(as_endpoint, sl.endpoints):
                    for ip in ep.addresses:
                        if (sl.namespace, sl.service) in headless:
                            add("service", base, _family(ip))
                        for label in (ep.hostname, ep.pod_name, dashed(ip)):
                            if label and len(label) < 64:
                                add("endpoint", f"{label}.{base}", _family(ip), 255)
                    endpoint_ips.update(ep.addresses)
    for ip in addresses | cluster_ips | endpoint_ips:
        full, *parents = _reverse_names(ip)
        add("reverse", full, PTR)
        if ip in cluster_ips and ip in endpoint_ips:  # a ClusterIP's PTR names only the Service
            add("reverse-shared", full, PTR)
        for name in parents:
            add("reverse-parent", name, PTR)
    for name in aliases:  # CNAMEs: chased hop by hop inside the zone, loops, IP targets
        add("alias", name, A, AAAA, CNAME, SRV)
    for kind in ("service", "endpoint", "structure"):  # ANY must pick A over AAAA
        for name, types in list(named.get(kind, {}).items()):
            if {A, AAAA} <= types:
                add("dual", name, 255, A, AAAA)
    return {kind: tuple((name, tuple(sorted(types))) for name, types in sorted(found.items()))
            for kind, found in sorted(named.items())}


OBJECT_KINDS = ("service", "headless", "endpoint", "srv", "pod", "reverse")  # asked about more often
NEIGHBOUR_LABELS = ("x", "_tcp", "_udp", "_http", "_dns", "web-0", "db", "10-244-0-1", "svc", "pod",
                    "1", "0", "a", "default", "ns", "dns")
OUTSIDE = ("example.com", "com", ".", "arpa", "local", "xcluster.local", "cluster.local.example",
           "in-addr.arpa.example", "10.in-addr.arpa.example")


@st.composite
def _neighbour(draw: st.DrawFn, name: str) -> str:
    """The name itself, or one label added, removed or changed (the zone mostly kept)."""
    labels = [lab for lab in name.split(".") if lab]
    op = draw(st.sampled_from(("same", "same", "same", "add", "remove", "change")))
    if op == "add":
        labels.insert(0, draw(st.sampled_from(NEIGHBOUR_LABELS)))
    elif op == "remove" and labels:
        labels.pop(0)
    elif op == "change" and labels:  # mostly the labels left of the zone's own two
        labels[draw(st.integers(0, max(0, len(labels) - 3)))] = draw(st.sampled_from(NEIGHBOUR_LABELS))
    return ".".join(labels) + "."


def _case_mangled(name: str, mask: int) -> str:
    """0x20: letters flipped to upper case where `mask` has a bit."""
    return "".join(c.upper() if mask >> (i % 60) & 1 else c for i, c in enumerate(name))


def questions(zone: str, objs: Iterable[KubeObject],
              extra_addresses: Iterable[str] = ()) -> st.SearchStrategy[Question]:
    """A question about the cluster: a kind of name, then one of its names or a neighbour,
    the type that kind is usually asked for or any type, sometimes another class, EDNS or
    not (DO, options), random RD/CD/AD and ID, 0x20 case."""
    return _question(names_in(zone, objs, extra_addresses))


@st.composite
def _question(draw: st.DrawFn, known: Names) -> Question:
    kind = pick(draw, [*(k for k in OBJECT_KINDS if k in known), *known, "outside"])  # first: drawn most
    natural: tuple[int, ...] = (A,)
    if kind == "outside":
        name = draw(st.sampled_from(OUTSIDE))
    else:
        name, natural = pick(draw, known[kind])
        name = draw(_neighbour(name))
    if draw(st.booleans()):
        name = _case_mangled(name, draw(st.integers(0, 2**60 - 1)))
    qtype = pick(draw, (natural, natural, COMMON_TYPES, RARE_TYPES)[draw(st.integers(0, 3))])
    qclass = IN
    if draw(st.integers(0, 14)) == 0:
        qclass = draw(st.sampled_from((CH, CH, 255, 254, 4)))
        if qclass == CH and draw(st.booleans()):  # the server's identity (RFC 4892)
            name = draw(st.sampled_from(("id.server.", "hostname.bind.", "version.bind.", "ID.Server.")))
            qtype = draw(st.sampled_from((TXT, TXT, 255, A)))
    edns, payload, do, nsid = None, 1232, False, False
    if draw(st.integers(0, 2)):
        edns = 1 if draw(st.integers(0, 19)) == 0 else 0
        payload = draw(st.sampled_from((0, 100, 512, 600, 1232, 1400, 4096, 65535)))
        do, nsid = draw(st.booleans()), draw(st.integers(0, 7)) == 0
    mangle = None
    if draw(st.integers(0, 29)) == 0:
        mangle = (draw(st.sampled_from(MANGLES)), draw(st.integers(0, 255)))
    return Question(name, qtype, qclass, edns, payload, do, nsid, draw(st.booleans()), draw(st.booleans()),
                    draw(st.booleans()), draw(st.integers(0, 65535)), mangle, kind)


# ---------------------------------------------------------------------------- big answers
@st.composite
def big_answers(draw: st.DrawFn, zone: str) -> tuple[list[KubeObject], Question]:
    """A Service whose answers may not fit a UDP reply: a headless one with many endpoints,
    or a ClusterIP one with many named ports; and a question that asks for them."""
    z = _zone(zone)
    base = f"big.team.svc.{z}"
    if draw(st.booleans()):
        n = draw(st.integers(20, 60))
        octets = draw(st.lists(st.integers(1, 254), min_size=n, max_size=n, unique=True))
        named = draw(st.booleans())
        eps = [{"addresses": [f"10.244.9.{o}"], **({"hostname": f"h{o}"} if named else {})} for o in octets]
        eps += [{"addresses": [f"fd00:9::{o:x}"]} for o in octets[: draw(st.integers(0, 10))]]
        docs = [{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "big", "namespace": "team"},
                 "spec": {"clusterIP": "None", "ports": [{"name": "http", "port": 80}]}},
                {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                 "metadata": {"name": "big-a", "namespace": "team", "labels": {SVC_LABEL: "big"}},
                 "addressType": "IPv4", "endpoints": [e for e in eps if ":" not in e["addresses"][0]],
                 "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]},
                {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                 "metadata": {"name": "big-b", "namespace": "team", "labels": {SVC_LABEL: "big"}},
                 "addressType": "IPv6", "endpoints": [e for e in eps if ":" in e["addresses"][0]],
                 "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}]
    else:
        n = draw(st.integers(20, 60))
        docs = [{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "big", "namespace": "team"},
                 "spec": {"clusterIPs": ["10.96.9.9", "fd00:96::9"],
                          "ports": [{"name": f"p{i}", "port": 1000 + i} for i in range(n)]}}]
    name, qtype = draw(st.sampled_from(((base, A), (base, AAAA), (base, SRV), (base, 255),
                                        (f"_http._tcp.{base}", SRV))))
    edns = draw(st.sampled_from((None, 0)))
    payload = draw(st.sampled_from((512, 700, 1000, 1232)))
    return _decode(docs), Question(name + ".", qtype, edns=edns, payload=payload, id=draw(st.integers(0, 65535)))
