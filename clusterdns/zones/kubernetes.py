"""The cluster zone: the Kubernetes DNS specification's names, read from the record store.

Names are parsed right to left after the zone is stripped (CoreDNS parse.go), into a
"node": the RRsets that exist at that name, or None when the name does not exist.
NXDOMAIN versus NODATA follows from that one fact (RFC 1034 4.3.2, RFC 8020), so every
query type is answered consistently. Rules and their sources: shared/docs/dns-spec.md.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from clusterdns.kube.store import ClusterStore, DepKey, ServiceView
from clusterdns.wire import records as R
from clusterdns.wire.records import Answer, Record

SCHEMA_VERSION = "1.1.0"  # kubernetes/dns docs/specification.md
SCHEMA_TTL = 28800  # the spec's example and CoreDNS, independent of `ttl`
REVERSE_ZONES = ("in-addr.arpa", "ip6.arpa")
MAX_CHASE = 8  # CNAME hops followed inside our zone (ExternalName -> ExternalName ...)
PODS_MODES = ("disabled", "insecure", "verified")
# RFC 8482: ANY gets one RRset, the first of these that exists
ANY_ORDER = (R.A, R.AAAA, R.SRV, R.PTR, R.TXT, R.SOA, R.NS)


@dataclass(slots=True)
class Node:
    """What exists at one name: its RRsets by type, or a CNAME."""

    rrsets: dict[int, list[Record]] = field(default_factory=dict)
    cname: Record | None = None


def _family(ip: str) -> int:
    return R.AAAA if ":" in ip else R.A


class ClusterZone:
    """Answers for `<zone>` and the reverse zones, from a ClusterStore."""

    def __init__(self, store: ClusterStore, zone: str = "cluster.local", ttl: int = 5,
                 pods: str = "insecure", ignore_empty_service: bool = False,
                 ns_addresses: tuple[str, ...] = ()) -> None:
        if pods not in PODS_MODES:
            raise ValueError(f"pods mode must be one of {', '.join(PODS_MODES)}")
        self.store = store
        self.zone = zone.lower().strip(".")
        self.suffix = "." + self.zone
        self.ttl = ttl
        self.pods = pods
        self.ignore_empty_service = ignore_empty_service
        self.ns_addresses = ns_addresses  # used when there is no kube-dns Service
        self.mname = f"ns.dns.{self.zone}"

    # ------------------------------------------------------------ public
    def apex_of(self, name: str) -> str | None:
        """The zone apex `name` belongs to, or None if it is not ours."""
        for apex in (self.zone, *REVERSE_ZONES):
            if name == apex or name.endswith("." + apex):
                return apex
        return None

    def answer(self, name: str, qtype: int) -> Answer:
        """Answer a question for a lowercased name inside one of our zones."""
        ans = Answer()
        self._resolve(name, qtype, ans, set())
        return ans

    # ------------------------------------------------------------ answering
    def _resolve(self, name: str, qtype: int, ans: Answer, seen: set[str]) -> None:
        seen.add(name)
        node = self._node(name, ans.deps)
        if node is None:
            if self.store.synced:
                ans.rcode = R.NXDOMAIN
            else:  # we cannot know yet: never claim the name is missing
                ans.rcode = R.SERVFAIL
                ans.cacheable = False
            ans.authority = [self._soa(self.apex_of(name) or self.zone, ans.deps)]
            return
        if node.cname is not None and qtype != R.CNAME:
            ans.answer.append(node.cname)
            target = node.cname.data
            if self.apex_of(target) is None:
                ans.chase = target  # outside: only a forwarder can follow it
            elif target not in seen and len(seen) <= MAX_CHASE:
                self._resolve(target, qtype, ans, seen)
            return
        if node.cname is not None:
            ans.answer.append(node.cname)
            return
        rrs = node.rrsets.get(qtype)
        if qtype == R.ANY:
            rrs = next((node.rrsets[t] for t in ANY_ORDER if node.rrsets.get(t)), None)
        if not rrs:  # NODATA: the name exists with other types or none
            ans.authority = [self._soa(self.apex_of(name) or self.zone, ans.deps)]
            return
        ans.answer.extend(rrs)
        if rrs[0].rtype in (R.SRV, R.NS):
            self._add_addresses(rrs, ans)

    def _add_addresses(self, rrs: list[Record], ans: Answer) -> None:
        """Additional section: A/AAAA of SRV and NS targets we know (RFC 2782, 1035)."""
        done: set[str] = set()
        for rec in rrs:
            target = rec.data[3] if rec.rtype == R.SRV else rec.data
            if target in done:
                continue
            done.add(target)
            node = self._node(target, ans.deps)
            if node is not None:
                ans.additional.extend(node.rrsets.get(R.A, ()))
                ans.additional.extend(node.rrsets.get(R.AAAA, ()))

    def _soa(self, apex: str, deps: set[DepKey], track: bool = False) -> Record:
        """The zone's SOA; MINIMUM is `ttl`, the negative-caching TTL (RFC 2308 5).

        Only an answer to SOA itself tracks the serial; negative answers keep the serial
        they were built with, so a change elsewhere does not drop every cached NXDOMAIN.
        """
        if track:
            deps.add(("apex",))
        data = (self.mname, f"hostmaster.{self.zone}", self.store.serial % 2**32, 7200, 1800, 86400, self.ttl)
        return Record(apex, R.SOA, min(self.ttl, 300), data)

    # ------------------------------------------------------------ name grammar
    def _node(self, name: str, deps: set[DepKey]) -> Node | None:
        if name == self.zone:
            return self._apex(name, deps)
        if name.endswith(self.suffix):
            labels = name[: -len(self.suffix)].split(".")
            top, rest = labels[-1], labels[:-1]
            if top == "svc":
                return self._svc_tree(name, rest, deps)
            if top == "pod":
                return self._pod_tree(name, rest, deps)
            if top == "dns-version" and not rest:
                return Node({R.TXT: [Record(name, R.TXT, SCHEMA_TTL, SCHEMA_VERSION)]})
            if top == "dns" and not rest:
                return Node()  # empty non-terminal above ns.dns.<zone>
            if top == "dns" and rest == ["ns"]:
                return self._addresses_node(name, self._ns_addresses(deps))
            return None
        for apex in REVERSE_ZONES:
            if name == apex:
                return self._apex(name, deps)
            if name.endswith("." + apex):
                return self._ptr_node(name, apex, deps)
        return None

    def _apex(self, name: str, deps: set[DepKey]) -> Node:
        return Node({
            R.SOA: [self._soa(name, deps, track=True)],
            R.NS: [Record(name, R.NS, self.ttl, self.mname)],
        })

    def _ns_addresses(self, deps: set[DepKey]) -> tuple[str, ...]:
        """Our own addresses: the kube-dns Service's ClusterIPs, else the listen addresses."""
        deps.add(("svc", "kube-system", "kube-dns"))
        view = self.store.view("kube-system", "kube-dns")
        if view is not None and view.service.cluster_ips:
            return view.service.cluster_ips
        return self.ns_addresses

    def _addresses_node(self, name: str, ips: tuple[str, ...] | list[str]) -> Node:
        node = Node()
        for ip in dict.fromkeys(ips):
            node.rrsets.setdefault(_family(ip), []).append(Record(name, _family(ip), self.ttl, ip))
        return node

    # ------------------------------------------------------------ <...>.svc.<zone>
    def _svc_tree(self, name: str, labels: list[str], deps: set[DepKey]) -> Node | None:
        if not labels:
            return Node()  # svc.<zone> exists, with no data
        ns = labels[-1]
        if len(labels) == 1:
            deps.add(("ns", ns))
            return Node() if self.store.namespace_exists(ns) else None
        svc = labels[-2]
        deps.add(("svc", ns, svc))
        view = self.store.view(ns, svc)
        if view is None:
            return None
        if len(labels) == 2:
            return self._service_node(name, view)
        if view.service.external_name is not None:
            return None  # nothing lives below an ExternalName
        if view.service.headless and not view.backends:
            return None  # spec 2.4.1: no ready endpoints, no names at all
        if len(labels) == 3:
            if labels[0].startswith("_"):  # _proto: empty non-terminal (RFC 8020)
                proto = labels[0][1:]
                return Node() if any(p.protocol == proto for p in self._named_ports(view)) else None
            return self._endpoint_node(name, labels[0], view)
        if len(labels) == 4 and labels[0].startswith("_") and labels[1].startswith("_"):
            return self._srv_node(name, labels[0][1:], labels[1][1:], view)
        return None

    def _fqdn(self, view: ServiceView, host: str | None = None) -> str:
        s = view.service
        base = f"{s.name}.{s.namespace}.svc.{self.zone}"
        return f"{host}.{base}" if host else base

    def _service_node(self, name: str, view: ServiceView) -> Node | None:
        s = view.service
        if s.external_name is not None:
            try:
                ipaddress.ip_address(s.external_name)
                return None  # an IP is not a valid externalName target
            except ValueError:
                return Node(cname=Record(name, R.CNAME, self.ttl, s.external_name))
        if s.headless:
            if not view.backends:
                return None
            node = self._addresses_node(name, [b.ip for b in view.backends])
            pairs = [(self._fqdn(view, b.host), p.port) for b in view.backends for p in b.ports if p.port]
        else:
            if self.ignore_empty_service and not view.backends:
                return None
            node = self._addresses_node(name, s.cluster_ips)
            pairs = [(name, p.port) for p in s.ports if p.port]
        srv = self._srv_records(name, pairs)
        if srv:
            node.rrsets[R.SRV] = srv
        return node

    def _endpoint_node(self, name: str, host: str, view: ServiceView) -> Node | None:
        ips = [b.ip for b in view.backends if b.host == host]
        return self._addresses_node(name, ips) if ips else None

    @staticmethod
    def _named_ports(view: ServiceView):  # noqa: ANN205 - an iterator of Port
        if view.service.headless:
            return (p for b in view.backends for p in b.ports if p.name and p.port)
        return (p for p in view.service.ports if p.name and p.port)

    def _srv_node(self, name: str, port: str, proto: str, view: ServiceView) -> Node | None:
        if view.service.headless:
            # per endpoint, with the endpoint's own port (kube-dns and CoreDNS)
            pairs = [(self._fqdn(view, b.host), p.port) for b in view.backends for p in b.ports
                     if p.name == port and p.protocol == proto and p.port]
        else:
            pairs = [(self._fqdn(view), p.port) for p in view.service.ports
                     if p.name == port and p.protocol == proto and p.port]
        srv = self._srv_records(name, pairs)
        return Node({R.SRV: srv}) if srv else None

    def _srv_records(self, name: str, pairs: list[tuple[str, int | None]]) -> list[Record]:
        """Priority 0; weight floor(100/n), at least 1, n counted after de-duplication."""
        unique = list(dict.fromkeys(pairs))
        if not unique:
            return []
        weight = max(1, 100 // len(unique))
        return [Record(name, R.SRV, self.ttl, (0, weight, port, target)) for target, port in unique]

    # ------------------------------------------------------------ <...>.pod.<zone>
    def _pod_tree(self, name: str, labels: list[str], deps: set[DepKey]) -> Node | None:
        if not labels:
            return Node()  # pod.<zone>
        if self.pods == "disabled" or len(labels) > 2:
            return None
        ns = labels[-1]
        deps.add(("ns", ns))
        if not self.store.namespace_exists(ns):
            return None
        if len(labels) == 1:
            return Node()
        ip = self._pod_label_ip(labels[0])
        if ip is None:
            return None
        if self.pods == "verified":
            deps.add(("pods", ns))
            if not self.store.pod_has_ip(ns, ip):
                return None
        return self._addresses_node(name, [ip])

    @staticmethod
    def _pod_label_ip(label: str) -> str | None:
        """`1-2-3-4` is IPv4 (three dashes, no `--`); anything else is read as IPv6."""
        try:
            if label.count("-") == 3 and "--" not in label:
                return str(ipaddress.IPv4Address(label.replace("-", ".")))
            return str(ipaddress.IPv6Address(label.replace("-", ":")))
        except ValueError:
            return None

    # ------------------------------------------------------------ reverse zones
    def _ptr_node(self, name: str, apex: str, deps: set[DepKey]) -> Node | None:
        labels = name[: -len(apex) - 1].split(".")
        net = _reverse_network(labels, apex)
        if net is None:
            return None
        if net.prefixlen < net.max_prefixlen:  # a partial name: empty non-terminal?
            deps.add(("rev",))
            return Node() if self.store.has_address_in(net) else None
        ip = str(net.network_address)
        deps.add(("ptr", ip))
        targets = self.store.ptr_targets(ip)
        if not targets:
            return None
        # an address that is a ClusterIP names only the Service (CoreDNS checks services first)
        services = [t for t in targets if t.host is None]
        names = [f"{t.host + '.' if t.host else ''}{t.service}.{t.namespace}.svc.{self.zone}"
                 for t in (services or targets)]
        return Node({R.PTR: [Record(name, R.PTR, self.ttl, n) for n in dict.fromkeys(names)]})


def _reverse_network(labels: list[str], apex: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    """`4.3.2.1` under in-addr.arpa -> 1.2.3.4/32; fewer labels give a shorter prefix."""
    labels = labels[::-1]
    try:
        if apex == "in-addr.arpa":
            if len(labels) > 4 or not all(lab.isdigit() and len(lab) <= 3 and int(lab) < 256 for lab in labels):
                return None
            octets = [int(lab) for lab in labels] + [0] * (4 - len(labels))
            return ipaddress.IPv4Network((bytes(octets), 8 * len(labels)))
        if len(labels) > 32 or not all(len(lab) == 1 and lab in "0123456789abcdef" for lab in labels):
            return None
        value = int("".join(labels).ljust(32, "0"), 16)
        return ipaddress.IPv6Network((value, 4 * len(labels)))
    except ValueError:
        return None

