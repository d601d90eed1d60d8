"""The compiled cluster zone: owner names in wire form -> what exists there.

The store (`kube/store.py`) tells the zone which parts changed; the zone recompiles
only those (one Service's names, one address's PTR, one namespace's empty
non-terminals) and rebuilds the three SOA-bearing negative templates, so a query is
one dict lookup and a few byte concatenations, whatever was asked before.

Two kinds of names are computed from the name instead of compiled, because they are
not enumerable: pod names (`1-2-3-4.<ns>.pod.<zone>`, CoreDNS `pods insecure`; with
`verified` the store's pod index decides) and reverse-tree prefixes (an IPv6 address
alone has 31 of them), found by bisecting the sorted published addresses.
"""

from __future__ import annotations

import bisect
import gc
import ipaddress
import logging
from array import array

from clusterdns.cluster.compile import (
    ANY_ORDER,
    CLUSTER,
    CNAME,
    IN_ADDR,
    IP6,
    REVERSE_ZONES,
    Compiler,
    Entry,
    Node,
    ZoneSettings,
    address_records,
    address_value,
    leaf_node,
    qtc,
    reverse_wire,
)
from clusterdns.kube.store import ClusterStore, DepKey
from clusterdns.wire import encode as E
from clusterdns.wire.constants import HEADER, Rcode, RRClass, RRType
from clusterdns.wire.names import in_zone, labels as name_labels

log = logging.getLogger("clusterdns")

MAX_CHASE = 8  # CNAME hops followed inside our zone (ExternalName -> ExternalName ...)
KUBE_DNS = ("kube-system", "kube-dns")
IN_BYTES = int(RRClass.IN).to_bytes(2, "big")
#: types that are not data a name can lack: NODATA is never their answer
NOT_DATA_TYPES = frozenset((RRType.OPT, RRType.IXFR, RRType.AXFR, RRType.ANY))


class ClusterZone:
    """The cluster zone and the reverse zones, compiled from a ClusterStore."""

    def __init__(self, store: ClusterStore, settings: ZoneSettings) -> None:
        self.store = store
        self.settings = settings
        self.c = Compiler(settings)
        self.zone = self.c.zone
        self.zone_wire = self.c.zone_wire
        self.apex_wires = self.c.apex_wires
        self._apex_suffixes = tuple(self.apex_wires)  # for `apex_of`'s one-call filter
        self.names: dict[bytes, Entry] = {}
        self._owned: dict[tuple[str, str], tuple[bytes, ...]] = {}  # Service -> the names it owns
        # published addresses, sorted (reverse-tree prefixes); IPv4 packed 8 bytes each
        self._v4: array[int] = array("Q")
        self._v6: list[int] = []
        self._unsorted = False
        self.nodata: list[E.Prepared] = []
        self.nxdomain: list[E.Prepared] = []
        self.compile_all()
        store.subscribe(self.apply)

    def close(self) -> None:
        """Stop following the store (a reload built a new zone)."""
        self.store.unsubscribe(self.apply)

    def snapshot(self) -> dict[bytes, Entry]:
        """The index at this instant, for a zone transfer (cluster/transfer.py): entries
        are only ever replaced or removed, never changed in place, so a shallow copy taken
        on the event loop (the one writer) stays the zone as it was."""
        return self.names.copy()

    # ------------------------------------------------------------------ compiling
    def compile_all(self) -> None:
        """Everything, from scratch: at start and on a reload with new settings.

        The cyclic GC is paused meanwhile: compiling allocates ~10 objects a name, none
        of them in cycles, and generation-0 passes over them cost a third of the time."""
        enabled = gc.isenabled()
        gc.disable()
        try:
            self._compile_all()
        finally:
            if enabled:
                gc.enable()

    def _compile_all(self) -> None:
        names = self.names  # in place: the listeners hold this dict
        names.clear()
        self._owned = {}
        for key, view in self.store.views.items():
            owned = []
            for name, node in self.c.service(view):
                names[name] = node
                owned.append(name)
            self._owned[key] = tuple(owned)
        for ns in self._namespaces():
            names.update(self.c.namespace(ns))
        names.update(self.c.fixed())
        for ip in self.store.ptr:
            wire, apex = reverse_wire(ip)
            names[wire] = self._ptr_node(ip, apex)
        self._sort_addresses()
        self._apexes()

    def _sort_addresses(self) -> None:
        """The published addresses, sorted: reverse-tree prefixes are found by bisection.
        Rebuilt on the first prefix question after a change (rare), not on every change
        (an insertion into 100,000 sorted addresses moves 800 KB)."""
        self._unsorted = False
        v4: list[int]
        v6: list[int]
        v4, v6 = [], []
        for ip in self.store.ptr:
            (v6 if ":" in ip else v4).append(address_value(ip))
        self._v4, self._v6 = array("Q", sorted(v4)), sorted(v6)

    def _namespaces(self) -> set[str]:
        s = self.store
        return set(s.namespaces) | {ns for ns, n in s._implicit_ns.items() if n > 0}

    def apply(self, changes: set[DepKey]) -> None:
        """Store listener: recompile exactly what changed (one writer: the event loop).

        A re-list or the first list of a kind names every Service it touched, so even
        that compiles only those; the cyclic GC is paused for such large batches."""
        if len(changes) < 1000:
            self._apply(changes)
            return
        enabled = gc.isenabled()
        gc.disable()
        try:
            self._apply(changes)
        finally:
            if enabled:
                gc.enable()

    def _apply(self, changes: set[DepKey]) -> None:
        names = self.names
        if not self._owned and len(changes) > 1000:
            self._compile_all()  # the first load: the same result, without the bookkeeping
            return
        ptrs = [dep[1] for dep in changes if dep[0] == "ptr"]
        if len(ptrs) > 256:  # a list or re-list: sort the addresses once, not insert each
            for ip in ptrs:
                wire, apex = reverse_wire(ip)
                if self.store.ptr_targets(ip):
                    names[wire] = self._ptr_node(ip, apex)
                else:
                    names.pop(wire, None)
            self._sort_addresses()
            ptrs = []
        for ip in ptrs:
            self._ptr_changed(ip)
        for dep in changes:
            kind = dep[0]
            if kind == "svc":
                key = (dep[1], dep[2])
                for name in self._owned.pop(key, ()):
                    names.pop(name, None)
                view = self.store.view(*key)
                if view is not None:
                    owned = []
                    for name, node in self.c.service(view):
                        names[name] = node
                        owned.append(name)
                    self._owned[key] = tuple(owned)
            elif kind == "ns":
                ns = dep[1]
                fresh = dict(self.c.namespace(ns))
                for name in (
                    b"%c%s" % (len(ns), ns.encode()) + self.c.svc_wire,
                    b"%c%s" % (len(ns), ns.encode()) + self.c.pod_wire,
                ):
                    names.pop(name, None)
                if self.store.namespace_exists(ns):
                    names.update(fresh)
        self._apexes()

    def _ptr_changed(self, ip: str) -> None:
        wire, apex = reverse_wire(ip)
        if self.store.ptr_targets(ip):
            self.names[wire] = self._ptr_node(ip, apex)
        else:
            self.names.pop(wire, None)  # a full address: only ever a PTR name, never an apex
        self._unsorted = True  # the sorted addresses are rebuilt when a prefix is asked

    def _ptr_node(self, ip: str, apex: int) -> Entry:
        one = self.store.ptr_single(ip)
        if one is not None:
            return self.c.ptr([self.c.fqdn_wire(*one)], apex)
        targets = self.store.ptr_targets(ip)
        if len(targets) == 1:
            t = targets[0]
            return self.c.ptr([self.c.fqdn_wire(t.namespace, t.service, t.host)], apex)
        # an address that is a ClusterIP names only the Service (CoreDNS checks services first)
        services = [t for t in targets if t.host is None]
        return self.c.ptr([self.c.fqdn_wire(t.namespace, t.service, t.host) for t in (services or targets)], apex)

    def _ns_ips(self) -> tuple[str, ...]:
        """Our own addresses: the kube-dns Service's ClusterIPs, else the listen addresses."""
        view = self.store.view(*KUBE_DNS)
        if view is not None and view.service.cluster_ips:
            return view.service.cluster_ips
        return self.settings.ns_addresses

    def _apexes(self) -> None:
        """The SOA-bearing parts, after every change (the serial moved)."""
        serial = self.store.serial
        self.names.update(self.c.apexes(serial, self._ns_ips()))
        nx_rcode = Rcode.NXDOMAIN if self.store.synced else Rcode.SERVFAIL  # never claim absence before sync
        soas = [self.c.soa_record(apex, serial) for apex in (CLUSTER, IN_ADDR, IP6)]
        self.nodata = [E.make(authority=[soa]) for soa in soas]
        self.nxdomain = [E.make(rcode=nx_rcode, authority=[soa]) for soa in soas]

    # ------------------------------------------------------------------ answering
    def apex_of(self, name: bytes) -> int | None:
        """The apex (CLUSTER, IN_ADDR, IP6) a lowercased wire name is in, or None."""
        if not name.endswith(self._apex_suffixes):
            return None  # one C call for every name outside the zones (forwarded names)
        for apex, wire in enumerate(self.apex_wires):
            if in_zone(name, wire):
                return apex
        return None

    def lookup(self, name: bytes, tc: bytes) -> E.Prepared | bytes | None:
        """The hot path: the compiled answer for a lowercased wire name and the question's
        type+class bytes (a Prepared, or a lone record as bytes), or None when `answer`
        must decide (ANY, a CNAME to chase, a class other than IN, a computed name, or a
        name that is not ours).

        A name found in the index is well formed by construction; for one that is not,
        its labels are walked up to the closest existing ancestor, each checked, so a
        miss costs a few more lookups, not a parse.
        """
        names = self.names
        node = names.get(name)
        if node is not None:
            if type(node) is bytes:  # a lone record
                if node[2:6] == tc:
                    return node
                if tc[2:] == IN_BYTES and tc[0] == 0 and tc[1] not in NOT_DATA_TYPES:
                    return self.nodata[leaf_apex(name)]
                return None
            p = node.p if node.tc == tc else node.answers.get(tc)  # type: ignore[union-attr]  # a Node: bytes returned above
            if p is not None:
                return p
            if node.target is None and tc[2:] == IN_BYTES and tc[0] == 0 and tc[1] not in NOT_DATA_TYPES:  # type: ignore[union-attr]  # a Node: bytes returned above
                return self.nodata[node.apex]  # type: ignore[union-attr]  # NODATA: the name exists with other types
            return None
        n = len(name)
        if n > 255 or tc[2:] != IN_BYTES or (tc[0] == 0 and tc[1] in NOT_DATA_TYPES):
            return None  # OPT, AXFR, IXFR, ANY: the general path's FORMERR, REFUSED or ANY rule
        if not name.endswith(self._apex_suffixes):
            return None  # not under our apexes (a forwarded name): no walk
        i = 0
        while True:
            ln = name[i]
            if ln == 0 or ln > 63:
                return None
            i += ln + 1
            if i >= n:
                return None
            parent = names.get(name[i:])
            if parent is not None:
                if type(parent) is bytes:
                    return self.nxdomain[leaf_apex(name)]
                return self.nxdomain[parent.apex] if parent.closed else None  # type: ignore[union-attr]  # a Node: bytes returned above

    def answer(self, name: bytes, qtype: int, qclass: int = RRClass.IN) -> E.Prepared:
        """Any question about a name in our zones (the caller checked `apex_of`)."""
        p = self.lookup(name, bytes((qtype >> 8, qtype & 0xFF, qclass >> 8, qclass & 0xFF)))
        if type(p) is bytes:
            return E.make(answer=[p], qtype=qtype)
        if p is not None:
            return p  # type: ignore[return-value]  # a Prepared: not bytes, not None
        return self._resolve(name, qtype)

    def _node(self, name: bytes) -> Node | None:
        """The node at `name`: compiled, or computed (pods, reverse prefixes)."""
        node = self.names.get(name)
        if type(node) is bytes:
            return leaf_node(node, leaf_apex(name))
        if node is not None:
            return node  # type: ignore[return-value]  # a Node: not bytes, not None
        apex = self.apex_of(name)
        if apex is None:
            return None
        if apex == CLUSTER:
            return self._pod_node(name)
        return self._reverse_node(name, apex)

    def _resolve(self, name: bytes, qtype: int) -> E.Prepared:
        """The slow path: ANY, CNAME chains inside the zone, computed names, negatives."""
        answer: list[bytes] = []
        owner = E.OWNER
        at = HEADER + len(name) + 4  # where the next answer record goes in the reply
        seen = {name}
        while True:
            node = self._node(name)
            if node is None:
                apex = self.apex_of(name)
                neg = self.nxdomain[CLUSTER if apex is None else apex]
                if not answer:
                    return neg
                return E.make(rcode=neg.rcode, answer=answer, authority=[neg.body])
            if node.target is not None and qtype != RRType.CNAME:
                rec = owner + node.types()[CNAME].body[2:]
                answer.append(rec)
                target_at = at + len(owner) + 10  # the next owner points at this CNAME's target
                at += len(rec)
                target = node.target
                if self.apex_of(target) is None:
                    return E.make(answer=answer, chase=target)  # outside: a forwarder may follow it
                if target in seen or len(seen) > MAX_CHASE:
                    return E.make(answer=answer)
                seen.add(target)
                name, owner = target, E.pointer(target_at) or target
                continue
            p = node.get(qtc(qtype))
            if qtype == RRType.ANY:
                found = node.types()
                p = next((found[k] for k in ANY_ORDER if k in found), None)
            if p is None:  # NODATA: the name exists with other types or none
                if not answer:
                    return self.nodata[node.apex]
                return E.make(answer=answer, authority=[self.nodata[node.apex].body])
            if owner == E.OWNER:
                if qtype == RRType.ANY:
                    return E.make(
                        rcode=p.rcode,
                        answer=E.split_records(p.body[: p.ans_end], p.an),
                        additional=E.split_records(p.body[p.auth_end :], p.ar),
                        qtype=RRType.ANY,
                    )
                return p
            answer += E.split_records(E.reown(p.body, p.an, owner), p.an)
            return E.make(answer=answer, additional=E.full_owners(p.body, p.auth_end, p.ar, name))

    # ------------------------------------------------------------------ computed names
    def _pod_node(self, name: bytes) -> Node | None:
        """`<dashed-ip>.<ns>.pod.<zone>`: insecure answers any well-formed address,
        verified only a pod's; disabled never (`<ns>.pod.<zone>` is compiled)."""
        pods = self.settings.pods
        if pods == "disabled" or not name.endswith(self.c.pod_wire):
            return None
        labels = name_labels(name[: len(name) - len(self.c.pod_wire)] + b"\x00")
        if len(labels) != 2:
            return None
        ns = labels[1].decode("ascii", "replace")
        if not self.store.namespace_exists(ns):
            return None
        ip = _pod_label_ip(labels[0].decode("ascii", "replace"))
        if ip is None:
            return None
        if pods == "verified" and not self.store.pod_has_ip(ns, ip):
            return None
        from clusterdns.cluster.compile import positive

        return Node(positive(name, address_records([ip], self.settings.ttl)))

    def _reverse_node(self, name: bytes, apex: int) -> Node | None:
        """A reverse name not compiled: a prefix with addresses below is an empty
        non-terminal; a full address written another way (leading zeros) is looked up."""
        labels = [lab.decode("ascii", "replace") for lab in name_labels(name)][:-2]
        net = _reverse_network(labels, REVERSE_ZONES[apex - 1])
        if net is None:
            return None
        if net.prefixlen < net.max_prefixlen:
            if self._unsorted:
                self._sort_addresses()
            addrs = self._v6 if apex == IP6 else self._v4
            low = int(net.network_address)
            i = bisect.bisect_left(addrs, low)
            return Node(apex=apex, closed=False) if i < len(addrs) and addrs[i] <= int(net.broadcast_address) else None
        ip = str(net.network_address)
        if not self.store.ptr_targets(ip):
            return None
        entry = self._ptr_node(ip, apex)
        return leaf_node(entry, apex) if type(entry) is bytes else entry  # type: ignore[return-value]  # else a Node


def leaf_apex(name: bytes) -> int:
    """The apex of a name held as a lone record: its zone, from its last labels."""
    if name.endswith(b"\x04arpa\x00"):
        return IN_ADDR if name.endswith(b"\x07in-addr\x04arpa\x00") else IP6
    return CLUSTER


def _pod_label_ip(label: str) -> str | None:
    """`1-2-3-4` is IPv4 (three dashes, no `--`); anything else is read as IPv6."""
    try:
        if label.count("-") == 3 and "--" not in label:
            return str(ipaddress.IPv4Address(label.replace("-", ".")))
        return str(ipaddress.IPv6Address(label.replace("-", ":")))
    except ValueError:
        return None


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


__all__ = ["ClusterZone", "ZoneSettings"]
