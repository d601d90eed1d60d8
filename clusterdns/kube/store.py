"""The record store: cluster state as DNS needs it, fed by manifests or by the API watch.

Single writer (the loader or the watch tasks, on the event loop), many readers (the zone
logic). Every mutation ends with one notification that names what changed as dependency
keys, so the compiled zone (cluster/zone.py) recompiles exactly those parts:

    ("svc", ns, name)   a Service, its endpoints and everything below its name
    ("ns", ns)          whether a namespace exists
    ("pods", ns)        the pods of a namespace (pods verified)
    ("ptr", ip)         the PTR targets of one address
    ("rev",)            the set of addresses with PTR records (reverse empty non-terminals)
    ("apex",)           the SOA serial
    ("synced",)         the first sync is complete: absence may now be claimed (NXDOMAIN)

A query never sees half of an update: mutations run synchronously on the event loop, and
`batch()` groups several (a re-list) into one notification.
"""

from __future__ import annotations

import contextlib
import ipaddress
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from clusterdns.kube.objects import (
    Endpoints,
    EndpointSlice,
    KubeObject,
    Namespace,
    Pod,
    Port,
    Service,
)

DepKey = tuple[str, ...]
Listener = Callable[[set[DepKey]], None]
SYNCED: DepKey = ("synced",)


@dataclass(frozen=True, slots=True)
class Backend:
    """One ready endpoint address of a Service, with the DNS label it is published under."""

    ip: str
    label: str | None  # hostname or pod name (endpoint_pod_names); None: the dashed address
    ports: tuple[Port, ...]

    @property
    def host(self) -> str:
        """The DNS label: the hostname, or the dashed address made when asked (not kept:
        at 100,000 endpoints those strings would be 6 MB)."""
        return self.label if self.label is not None else dashed(self.ip)

    @property
    def named(self) -> bool:
        """True when the label came from a hostname (then no dashed name exists)."""
        return self.label is not None


@dataclass(frozen=True, slots=True)
class ServiceView:
    """A Service joined with its ready endpoints (all slices merged, duplicates collapsed).

    `entries` keeps an unlabelled endpoint whose ports are `ports` as its address alone,
    the rest as Backends (5 MB less at 100,000 endpoints); `backends` gives them all as
    Backends, made when read (compiling a Service reads them once)."""

    service: Service
    entries: tuple[Backend | str, ...]
    ports: tuple[Port, ...] = ()

    def labelled(self) -> list[tuple[str, str]]:
        """(DNS label, address) of every ready endpoint, without making Backends: what a
        Service that is not headless publishes of its endpoints."""
        return [(dashed(b), b) if type(b) is str else (b.host, b.ip) for b in self.entries]  # type: ignore[union-attr]  # not a str here

    @property
    def backends(self) -> tuple[Backend, ...]:
        ports = self.ports
        return tuple(Backend(b, None, ports) if type(b) is str else b for b in self.entries)  # type: ignore[misc]  # the others are Backends


@dataclass(frozen=True, slots=True)
class PtrTarget:
    namespace: str
    service: str
    label: str | None  # an endpoint's hostname or pod name
    endpoint_ip: str | None = None  # an endpoint without a label (its dashed address)

    @property
    def host(self) -> str | None:
        """The endpoint's DNS label; None: the Service's own name (a ClusterIP)."""
        if self.label is not None:
            return self.label
        return dashed(self.endpoint_ip) if self.endpoint_ip is not None else None


@dataclass(frozen=True, slots=True)
class _Pointer:
    """What `ClusterStore.ptr` keeps for one address: a PtrTarget without the address, so
    one object serves every unlabelled endpoint (and every ClusterIP) of a Service, and
    an address with one target keeps it bare, not in a tuple (11 MB at 100,000 endpoints)."""

    namespace: str
    service: str
    label: str | None
    dashed: bool  # an endpoint published under its dashed address

    def target(self, ip: str) -> PtrTarget:
        return PtrTarget(self.namespace, self.service, self.label, ip if self.dashed else None)

    def sort_key(self, ip: str) -> tuple[bool, str, str]:
        """The Service's own name first, then by service and label (stable answers)."""
        host = self.label if self.label is not None else dashed(ip) if self.dashed else None
        return host is not None, self.service, host or ""


def dashed(ip: str) -> str:
    """CoreDNS's system-assigned endpoint label: the address with '.'/':' as '-'."""
    if ":" not in ip:
        return ip.replace(".", "-")  # IPv4: never starts or ends with a dot
    label = ip.replace(":", "-")
    if label.endswith("-"):
        label += "0"
    if label.startswith("-"):
        label = "0" + label
    return label


class ClusterStore:
    """Services, EndpointSlices, Endpoints, Pods and Namespaces, with DNS-shaped indexes."""

    def __init__(self, endpoint_pod_names: bool = False) -> None:
        self.endpoint_pod_names = endpoint_pod_names
        self.services: dict[tuple[str, str], Service] = {}
        self.slices: dict[tuple[str, str], EndpointSlice] = {}
        self.endpoints: dict[tuple[str, str], Endpoints] = {}
        self.pods: dict[tuple[str, str], Pod] = {}
        self.namespaces: set[str] = set()
        self.views: dict[tuple[str, str], ServiceView] = {}
        self.ptr: dict[str, _Pointer | tuple[_Pointer, ...]] = {}  # address -> what points at it
        self.synced = False
        self.serial = int(time.time())
        # Service -> its slices' names, sorted (a tuple: most Services have one slice,
        # and a set per Service would be 2.4 MB at 10,000 Services)
        self._slices_by_svc: dict[tuple[str, str], tuple[str, ...]] = {}
        self._implicit_ns: Counter[str] = Counter()
        self._pod_ips: Counter[tuple[str, str]] = Counter()
        self._listeners: list[Listener] = []
        self._feeds: list[Callable[[list[tuple[str, tuple]]], None]] = []
        self._journal: list[tuple[str, tuple]] = []
        self._depth = 0
        self._batch = 0
        self._dirty_svcs: set[tuple[str, str]] = set()
        self._changes: set[DepKey] = set()
        self.last_change = time.monotonic()

    # ---------------------------------------------------------------- readers
    def view(self, namespace: str, name: str) -> ServiceView | None:
        return self.views.get((namespace, name))

    def namespace_exists(self, namespace: str) -> bool:
        return namespace in self.namespaces or self._implicit_ns[namespace] > 0

    def pod_has_ip(self, namespace: str, ip: str) -> bool:
        return self._pod_ips[(namespace, ip)] > 0

    def ptr_targets(self, ip: str) -> tuple[PtrTarget, ...]:
        return tuple(p.target(ip) for p in self._pointers(ip))

    def ptr_single(self, ip: str) -> tuple[str, str, str | None] | None:
        """(namespace, service, host label or None) when `ip` has exactly one target (most
        addresses), without building a PtrTarget: compiling 100,000 PTR names reads this."""
        p = self.ptr.get(ip)
        if type(p) is not _Pointer:
            return None
        return p.namespace, p.service, p.label if p.label is not None else dashed(ip) if p.dashed else None

    def _pointers(self, ip: str) -> tuple[_Pointer, ...]:
        found = self.ptr.get(ip, ())
        return (found,) if type(found) is _Pointer else found  # type: ignore[return-value]  # a tuple when not a _Pointer

    def has_address_in(self, net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
        """Is any published address inside `net`? (reverse-zone empty non-terminals)"""
        return any(ipaddress.ip_address(ip) in net for ip in self.ptr)

    # ---------------------------------------------------------------- writers
    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def unsubscribe(self, listener: Listener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Group mutations into one atomic change (one notification)."""
        self._batch += 1
        try:
            yield
        finally:
            self._batch -= 1
            if self._batch == 0:
                self._flush()

    def upsert(self, obj: KubeObject) -> None:
        with self._public("upsert", obj), self.batch():
            self._upsert(obj)

    def delete(self, kind: str, namespace: str, name: str) -> None:
        with self._public("delete", kind, namespace, name), self.batch():
            self._delete(kind, namespace, name)

    def replace(self, kind: str, objs: Iterable[KubeObject]) -> None:
        """Swap every object of one kind for `objs` (a re-list), as one change."""
        objs = list(objs)
        with self._public("replace", kind, objs), self.batch():
            fresh = {self._key(o): o for o in objs}
            for ns, name in self._keys(kind) - fresh.keys():
                self._delete(kind, ns, name)
            for o in fresh.values():
                self._upsert(o)

    def load(self, objs: Iterable[KubeObject]) -> None:
        """Initial load: everything in one change, then mark synced."""
        objs = list(objs)
        with self._public("load", objs), self.batch():
            for o in objs:
                self._upsert(o)
            self.mark_synced()

    def mark_synced(self) -> None:
        with self._public("mark_synced"), self.batch():
            if not self.synced:
                self.synced = True
                self._changes.add(SYNCED)

    # ---------------------------------------------------------------- replication
    def follow(self, feed: Callable[[list[tuple[str, tuple]]], None]) -> None:
        """Send every public mutation to `feed`, one list per atomic change.

        `--workers` uses it: the process that owns the source replays the same calls
        on each worker's store (`apply_journal`), so all answer from one view.
        """
        self._feeds.append(feed)

    def apply_journal(self, ops: list[tuple[str, tuple]]) -> None:
        """Replay a journal from `follow`, as one atomic change."""
        with self.batch():
            for op, args in ops:
                getattr(self, op)(*args)

    @contextlib.contextmanager
    def _public(self, op: str, *args: object) -> Iterator[None]:
        if self._feeds and self._depth == 0:
            self._journal.append((op, args))
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1

    # ---------------------------------------------------------------- internals
    def _table(self, kind: str) -> dict | None:
        return {
            "Service": self.services,
            "EndpointSlice": self.slices,
            "Endpoints": self.endpoints,
            "Pod": self.pods,
        }.get(kind)  # type: ignore[return-value]  # four value types, joined to object

    @staticmethod
    def _key(obj: KubeObject) -> tuple[str, str]:
        return ("", obj.name) if isinstance(obj, Namespace) else (obj.namespace, obj.name)

    def _keys(self, kind: str) -> set[tuple[str, str]]:
        table = self._table(kind)
        return set(table) if table is not None else {("", n) for n in self.namespaces}

    def _upsert(self, obj: KubeObject) -> None:
        if isinstance(obj, Namespace):
            if obj.name not in self.namespaces:
                self.namespaces.add(obj.name)
                self._changes.add(("ns", obj.name))
            return
        kind = type(obj).__name__
        self._delete(kind, obj.namespace, obj.name, quiet_ns=True)
        key = (obj.namespace, obj.name)
        if isinstance(obj, Service):
            self.services[key] = obj
            self._dirty_svcs.add(key)
        elif isinstance(obj, EndpointSlice):
            self.slices[key] = obj
            if obj.service:
                svc_key = (obj.namespace, obj.service)
                members = self._slices_by_svc.get(svc_key, ())
                if obj.name not in members:
                    self._slices_by_svc[svc_key] = tuple(sorted((*members, obj.name)))
                self._dirty_svcs.add((obj.namespace, obj.service))
        elif isinstance(obj, Endpoints):
            self.endpoints[key] = obj
            self._dirty_svcs.add(key)
        elif isinstance(obj, Pod):
            self.pods[key] = obj
            if not obj.terminating:
                for ip in obj.ips:
                    self._pod_ips[(obj.namespace, ip)] += 1
            self._changes.add(("pods", obj.namespace))
        self._ns_ref(obj.namespace, +1)

    def _delete(self, kind: str, namespace: str, name: str, quiet_ns: bool = False) -> None:
        if kind == "Namespace":
            if name in self.namespaces:
                self.namespaces.discard(name)
                self._changes.add(("ns", name))
            return
        key = (namespace, name)
        table = self._table(kind)
        if table is None or key not in table:
            return
        old = table.pop(key)
        if isinstance(old, Service):
            self._dirty_svcs.add(key)
        elif isinstance(old, EndpointSlice):
            if old.service:
                svc_key = (namespace, old.service)
                members = tuple(n for n in self._slices_by_svc.get(svc_key, ()) if n != name)
                if members:
                    self._slices_by_svc[svc_key] = members
                else:
                    self._slices_by_svc.pop(svc_key, None)
                self._dirty_svcs.add(svc_key)
        elif isinstance(old, Endpoints):
            self._dirty_svcs.add(key)
        elif isinstance(old, Pod):
            if not old.terminating:
                for ip in old.ips:
                    self._pod_ips[(namespace, ip)] -= 1
                    if self._pod_ips[(namespace, ip)] <= 0:
                        del self._pod_ips[(namespace, ip)]
            self._changes.add(("pods", namespace))
        self._ns_ref(namespace, -1, quiet_ns)

    def _ns_ref(self, namespace: str, delta: int, quiet: bool = False) -> None:
        """Objects imply their namespace exists (manifests rarely list Namespaces)."""
        before = self.namespace_exists(namespace)
        self._implicit_ns[namespace] += delta
        if self._implicit_ns[namespace] <= 0:
            del self._implicit_ns[namespace]
        if not quiet and before != self.namespace_exists(namespace):
            self._changes.add(("ns", namespace))

    def _slices_of(self, key: tuple[str, str]) -> list[EndpointSlice]:
        names = self._slices_by_svc.get(key)
        if names:
            return [self.slices[(key[0], n)] for n in names]
        legacy = self.endpoints.get(key)
        return list(legacy.slices) if legacy else []

    def _build_view(self, key: tuple[str, str]) -> ServiceView | None:
        svc = self.services.get(key)
        if svc is None:
            return None
        if svc.external_name is not None:
            return ServiceView(svc, ())
        merged: dict[tuple[str, str | None], Backend | str] = {}
        slices = self._slices_of(key)
        plain = slices[0].ports if slices else ()  # the ports an address-only entry has
        for sl in slices:
            for ep in sl.endpoints:
                if type(ep) is str:  # one ready address, nothing else (objects.EndpointEntry)
                    self._merge(merged, plain, ep, None, sl.ports)
                    continue
                if not (ep.ready or svc.publish_not_ready):  # type: ignore[union-attr]  # not a str here
                    continue
                for ip in ep.addresses:  # type: ignore[union-attr]  # not a str here
                    if ep.hostname:  # type: ignore[union-attr]  # as above
                        label: str | None = ep.hostname  # type: ignore[union-attr]  # as above
                    elif self.endpoint_pod_names and ep.pod_name and len(ep.pod_name) < 64:  # type: ignore[union-attr]  # as above
                        label = ep.pod_name.lower()  # type: ignore[union-attr]  # as above
                    else:
                        label = None
                    self._merge(merged, plain, ip, label, sl.ports)
        return ServiceView(svc, tuple(merged.values()), plain)

    @staticmethod
    def _merge(
        merged: dict[tuple[str, str | None], Backend | str],
        plain: tuple[Port, ...],
        ip: str,
        label: str | None,
        ports: tuple[Port, ...],
    ) -> None:
        """Add one endpoint address; the same address and label in several slices is one
        endpoint with the ports of all of them."""
        prev = merged.get((ip, label))
        if prev is not None:
            had = plain if type(prev) is str else prev.ports  # type: ignore[union-attr]  # not a str here
            if ports == had:
                return
            ports = had + tuple(p for p in ports if p not in had)
        merged[(ip, label)] = ip if label is None and ports == plain else Backend(ip, label, ports)

    @staticmethod
    def _ptr_pairs(view: ServiceView | None) -> set[tuple[str, _Pointer]]:
        if view is None:
            return set()
        svc = view.service
        own = _Pointer(svc.namespace, svc.name, None, False)
        by_address = _Pointer(svc.namespace, svc.name, None, True)  # shared by the unlabelled
        pairs = {(ip, own) for ip in svc.cluster_ips}
        for b in view.entries:
            if type(b) is str:
                pairs.add((b, by_address))
            else:
                pairs.add((b.ip, by_address if b.label is None else _Pointer(svc.namespace, svc.name, b.label, False)))  # type: ignore[union-attr]  # not a str here
        return pairs

    def _flush(self) -> None:
        if self._journal:
            journal, self._journal = self._journal, []
            for feed in self._feeds:
                feed(journal)
        changes = self._changes
        rev_changed = False
        for key in self._dirty_svcs:
            old = self.views.get(key)
            new = self._build_view(key)
            if new == old:
                continue
            if new is None:
                del self.views[key]
            else:
                self.views[key] = new
            changes.add(("svc",) + key)
            before, after = self._ptr_pairs(old), self._ptr_pairs(new)
            for ip, target in before - after:
                left = tuple(t for t in self._pointers(ip) if t != target)
                if left:
                    self.ptr[ip] = left if len(left) > 1 else left[0]
                else:
                    self.ptr.pop(ip, None)
                    rev_changed = True
                changes.add(("ptr", ip))
            for ip, target in sorted(after - before, key=lambda p: p[1].sort_key(p[0])):
                cur = self.ptr.get(ip)
                if cur is None:
                    rev_changed = True
                    self.ptr[ip] = target
                else:
                    self.ptr[ip] = (cur, target) if type(cur) is _Pointer else cur + (target,)  # type: ignore[operator]  # a tuple when not a _Pointer
                changes.add(("ptr", ip))
        self._dirty_svcs = set()
        if rev_changed:
            changes.add(("rev",))
        self._changes = set()
        if changes:
            self.serial = max(self.serial + 1, int(time.time()))
            self.last_change = time.monotonic()
            changes.add(("apex",))
            for listener in self._listeners:
                listener(changes)
