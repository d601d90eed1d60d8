"""Slim copies of Kubernetes API objects: only what DNS answers need.

Manifests (YAML) and the API watch (raw JSON) both decode through `parse_object`,
so a broken object is reported the same way whichever source it came from.
Following CoreDNS's object/ package, we keep a handful of fields per object:
memory per Service and per endpoint is a design constraint at cluster scale.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import sys
from dataclasses import dataclass
from typing import Any

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
TOLERATE_UNREADY = "service.alpha.kubernetes.io/tolerate-unready-endpoints"

log = logging.getLogger("clusterdns")


class ObjectError(ValueError):
    """An API object that cannot be used; names the object and the field at fault."""

    def __init__(self, kind: str, ref: str, field: str, problem: str) -> None:
        self.kind, self.ref, self.field, self.problem = kind, ref, field, problem
        super().__init__(f"{kind} {ref}: field {field}: {problem}")


@dataclass(frozen=True, slots=True)
class Port:
    name: str  # "" when unnamed
    protocol: str  # lowercase: tcp, udp, sctp
    port: int | None  # None on an EndpointSlice port means "all ports": no SRV


@dataclass(frozen=True, slots=True)
class Service:
    namespace: str
    name: str
    type: str
    cluster_ips: tuple[str, ...]  # empty for headless and ExternalName
    headless: bool
    external_name: str | None
    ports: tuple[Port, ...]
    publish_not_ready: bool
    # what reaches the Service from outside the cluster (the external zones, cluster/external.py)
    external_ips: tuple[str, ...] = ()  # spec.externalIPs
    ingress_ips: tuple[str, ...] = ()  # status.loadBalancer.ingress[].ip
    ingress_hosts: tuple[str, ...] = ()  # status.loadBalancer.ingress[].hostname, lowercase, no final dot


@dataclass(frozen=True, slots=True)
class Endpoint:
    addresses: tuple[str, ...]
    ready: bool
    hostname: str | None
    pod_name: str | None  # targetRef name when it is a Pod (endpoint_pod_names)


#: An EndpointSlice's endpoints: most are one ready address with no hostname and no pod
#: name to publish, kept as that address alone (an Endpoint and its tuple would add
#: 10 MB at 100,000 endpoints); `endpoint()` gives the Endpoint either stands for.
EndpointEntry = Endpoint | str


def endpoint(entry: EndpointEntry) -> Endpoint:
    """The Endpoint an entry of `EndpointSlice.endpoints` stands for."""
    return Endpoint((entry,), True, None, None) if type(entry) is str else entry  # type: ignore[return-value]  # not a str: an Endpoint


def _entry(addrs: tuple[str, ...], ready: bool, hostname: str | None, pod: str | None) -> EndpointEntry:
    if ready and hostname is None and pod is None and len(addrs) == 1:
        return addrs[0]
    return Endpoint(addrs, ready, hostname, pod)


@dataclass(frozen=True, slots=True)
class EndpointSlice:
    namespace: str
    name: str
    service: str | None  # from the kubernetes.io/service-name label
    address_type: str  # IPv4, IPv6 (FQDN slices are dropped at parse time)
    endpoints: tuple[EndpointEntry, ...]
    ports: tuple[Port, ...]


@dataclass(frozen=True, slots=True)
class Endpoints:
    """v1 Endpoints, flattened; used only for a Service that has no EndpointSlices."""

    namespace: str
    name: str
    slices: tuple[EndpointSlice, ...]  # one pseudo-slice per subset


@dataclass(frozen=True, slots=True)
class Pod:
    namespace: str
    name: str
    ips: tuple[str, ...]
    terminating: bool


@dataclass(frozen=True, slots=True)
class Namespace:
    name: str


KubeObject = Service | EndpointSlice | Endpoints | Pod | Namespace

# kind -> accepted apiVersions (what `kubectl get -o yaml` prints)
KINDS = {
    "Service": ("v1",),
    "EndpointSlice": ("discovery.k8s.io/v1",),
    "Endpoints": ("v1",),
    "Pod": ("v1",),
    "Namespace": ("v1",),
}


class _Reader:
    """Typed field access that turns a bad field into an ObjectError naming it."""

    def __init__(self, kind: str, obj: dict[str, Any]) -> None:
        self.kind = kind
        meta = obj.get("metadata")
        if not isinstance(meta, dict):
            raise ObjectError(kind, "<unnamed>", "metadata", "missing or not a mapping")
        self.meta = meta
        name = meta.get("name")
        if not isinstance(name, str) or not name:
            raise ObjectError(kind, self.ref, "metadata.name", "missing or not a string")
        self.name = name.lower()

    @property
    def ref(self) -> str:
        """namespace/name for messages, built only when one is needed."""
        name, ns = self.meta.get("name"), self.meta.get("namespace")
        return f"{ns + '/' if isinstance(ns, str) and ns else ''}{name if isinstance(name, str) else '<unnamed>'}"

    def fail(self, field: str, problem: str) -> ObjectError:
        return ObjectError(self.kind, self.ref, field, problem)

    def namespace(self) -> str:
        ns = self.meta.get("namespace")
        if ns is None or ns == "":
            return "default"  # kubectl omits nothing, but hand-written YAML often does
        if not isinstance(ns, str):
            raise self.fail("metadata.namespace", "not a string")
        return sys.intern(ns.lower())

    def mapping(self, value: Any, field: str) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.fail(field, "not a mapping")
        return value

    def items(self, value: Any, field: str) -> list[Any]:
        if value is None:  # the API server sends `endpoints: null` for empty slices
            return []
        if not isinstance(value, list):
            raise self.fail(field, "not a list")
        return value

    def string(self, value: Any, field: str, required: bool = False) -> str | None:
        if value is None or value == "":
            if required:
                raise self.fail(field, "missing")
            return None
        if not isinstance(value, str):
            raise self.fail(field, "not a string")
        return value

    def port_number(self, value: Any, field: str, required: bool) -> int | None:
        if value is None:
            if required:
                raise self.fail(field, "missing")
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(field, f"not a number: {value!r}")
        if not 0 < value < 65536:
            raise self.fail(field, f"out of range 1-65535: {value}")
        return value

    def ports(self, value: Any, field: str, required_number: bool) -> tuple[Port, ...]:
        out = []
        for i, p in enumerate(self.items(value, field)):
            f = f"{field}[{i}]"
            p = self.mapping(p, f)
            name = self.string(p.get("name"), f + ".name") or ""
            proto = self.string(p.get("protocol"), f + ".protocol") or "TCP"
            number = self.port_number(p.get("port"), f + ".port", required_number)
            out.append(Port(name.lower(), proto.lower(), number))
        return tuple(out)

    def ip(self, value: Any, field: str) -> str:
        if not isinstance(value, str):
            raise self.fail(field, "not a string")
        if _canonical(value):
            return value
        try:
            return str(ipaddress.ip_address(value))
        except ValueError:
            raise self.fail(field, f"not an IP address: {value!r}") from None

    def skip(self, exc: ObjectError) -> None:
        """A bad value in an optional field: the value is dropped, the object kept (a broken
        load-balancer status must not take the Service's cluster names with it)."""
        log.warning("%s: value skipped", exc)

    def external(self, spec: dict[str, Any], status: Any) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
        """spec.externalIPs, and the ingress IPs and hostnames of status.loadBalancer."""
        ext: list[str] = []
        try:
            raw = self.items(spec.get("externalIPs"), "spec.externalIPs")
        except ObjectError as exc:
            self.skip(exc)
            raw = []
        for i, ip in enumerate(raw):
            try:
                ext.append(self.ip(ip, f"spec.externalIPs[{i}]"))
            except ObjectError as exc:
                self.skip(exc)
        ips: list[str] = []
        hosts: list[str] = []
        try:
            lb = self.mapping(self.mapping(status, "status").get("loadBalancer"), "status.loadBalancer")
            ingress = self.items(lb.get("ingress"), "status.loadBalancer.ingress")
        except ObjectError as exc:
            self.skip(exc)
            ingress = []
        for i, entry in enumerate(ingress):
            f = f"status.loadBalancer.ingress[{i}]"
            try:
                entry = self.mapping(entry, f)
            except ObjectError as exc:
                self.skip(exc)
                continue
            try:
                if entry.get("ip") not in (None, ""):
                    ips.append(self.ip(entry.get("ip"), f + ".ip"))
            except ObjectError as exc:
                self.skip(exc)
            try:
                host = self.string(entry.get("hostname"), f + ".hostname")
                if host is not None:
                    hosts.append(host.rstrip(".").lower())
            except ObjectError as exc:
                self.skip(exc)
        return tuple(ext), tuple(ips), tuple(hosts)


_pton, _ntop, _AF4, _AF6 = socket.inet_pton, socket.inet_ntop, socket.AF_INET, socket.AF_INET6


def _libc_ipv6_is_python_ipv6() -> bool:
    """Whether libc prints IPv6 as ipaddress does (RFC 5952); some libcs differ on zero runs."""
    samples = (
        "1:0:1:1:1:1:1:1",
        "1:0:0:1:0:0:1:1",
        "0:0:1:0:0:1:0:0",
        "1::",
        "::1",
        "::",
        "fd00::a:0:0:0:1",
        "ff02::1:ff00:1",
        "2001:db8:0:0:1:0:0:1",
        "0:1:0:1:0:1:0:1",
    )
    try:
        return all(_ntop(_AF6, _pton(_AF6, a)) == str(ipaddress.IPv6Address(a)) for a in samples)
    except (OSError, ValueError):  # pragma: no cover - no IPv6 in this libc
        return False


_V6 = _libc_ipv6_is_python_ipv6()


def _canonical(value: str) -> bool:
    """Whether `value` is an address as ipaddress prints it; libc's parser, ~10 times faster.

    False means "ask ipaddress": IPv6 with an IPv4 tail (libc prints `::ffff:1.2.3.4`,
    ipaddress does not), zone ids, non-canonical spellings and non-addresses.
    """
    try:
        if ":" in value:
            return _V6 and "." not in value and _ntop(_AF6, _pton(_AF6, value)) == value
        return _ntop(_AF4, _pton(_AF4, value)) == value
    except (OSError, ValueError):
        return False


class _Irregular(Exception):
    """Beyond the fast readers: the careful ones read the object, and word its errors."""


_PORTS: dict[tuple[Any, Any, Any], Port] = {}  # (name, protocol, port) as given -> its Port
_PORT_LISTS: dict[tuple[Port, ...], tuple[Port, ...]] = {}  # most slices share a few port lists


def _fast_ports(value: Any, required_number: bool) -> tuple[Port, ...]:
    """_Reader.ports for well-formed ports; the few distinct ports are built once."""
    if value is None:
        return ()
    if type(value) is not list:
        raise _Irregular
    out = []
    for p in value:
        if type(p) is not dict:
            raise _Irregular
        number = p.get("port")
        if type(number) is not int and (number is not None or required_number):
            raise _Irregular
        key = (p.get("name"), p.get("protocol"), number)
        try:
            port = _PORTS.get(key)
        except TypeError:  # a list or mapping as name or protocol
            raise _Irregular from None
        if port is None:
            name, proto, _ = key
            if (
                (name is not None and type(name) is not str)
                or (proto is not None and type(proto) is not str)
                or (number is not None and not 0 < number < 65536)
            ):
                raise _Irregular
            port = Port(name.lower() if name else "", proto.lower() if proto else "tcp", number)
            if len(_PORTS) < 4096:
                _PORTS[key] = port
        out.append(port)
    ports = tuple(out)
    return _PORT_LISTS.setdefault(ports, ports) if len(_PORT_LISTS) < 4096 else ports


def _namespace(meta: dict[str, Any]) -> str:
    """_Reader.namespace for a well-formed one."""
    ns = meta.get("namespace")
    if ns is None or ns == "":
        return "default"
    if type(ns) is not str:
        raise _Irregular
    return sys.intern(ns.lower())  # a few hundred namespaces, named by every object


def _fast_service(r: _Reader, obj: dict[str, Any]) -> Service:
    """_service for the usual Service: no field names built, no helper per field."""
    spec = obj.get("spec")
    if spec is None:
        spec = {}
    elif type(spec) is not dict:
        raise _Irregular
    stype = spec.get("type")
    if stype is None or stype == "":
        stype = "ClusterIP"
    elif type(stype) is not str or stype == "ExternalName":
        raise _Irregular
    ports = _fast_ports(spec.get("ports"), True)
    annotations = r.meta.get("annotations")
    if annotations is not None and type(annotations) is not dict:
        raise _Irregular
    pna = spec.get("publishNotReadyAddresses") is True or (
        annotations is not None and annotations.get(TOLERATE_UNREADY) == "true"
    )
    raw_ips = spec.get("clusterIPs")
    if raw_ips is None:
        one = spec.get("clusterIP")
        raw_ips = [] if one is None else [one]
    elif type(raw_ips) is not list:
        raise _Irregular
    headless = False
    ips = []
    for ip in raw_ips:
        if ip == "None":
            headless = True
        elif ip != "":
            if type(ip) is not str or not _canonical(ip):
                raise _Irregular
            ips.append(ip)
    ext = _fast_ips(spec.get("externalIPs"))
    ingress_ips: tuple[str, ...] = ()
    hosts: tuple[str, ...] = ()
    status = obj.get("status")
    if status is not None:
        if type(status) is not dict:
            raise _Irregular
        lb = status.get("loadBalancer")
        if lb is not None:
            if type(lb) is not dict:
                raise _Irregular
            ingress_ips, hosts = _fast_ingress(lb.get("ingress"))
    return Service(_namespace(r.meta), r.name, stype, tuple(ips), headless, None, ports, pna, ext, ingress_ips, hosts)


def _fast_ips(value: Any) -> tuple[str, ...]:
    """A list of canonical addresses (spec.externalIPs), else _Irregular."""
    if value is None:
        return ()
    if type(value) is not list:
        raise _Irregular
    for ip in value:
        if type(ip) is not str or not _canonical(ip):
            raise _Irregular
    return tuple(value)


def _fast_ingress(value: Any) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """status.loadBalancer.ingress: (IPs, hostnames), else _Irregular."""
    if value is None:
        return (), ()
    if type(value) is not list:
        raise _Irregular
    ips, hosts = [], []
    for entry in value:
        if type(entry) is not dict:
            raise _Irregular
        ip, host = entry.get("ip"), entry.get("hostname")
        if ip is not None and ip != "":
            if type(ip) is not str or not _canonical(ip):
                raise _Irregular
            ips.append(ip)
        if host is not None and host != "":
            if type(host) is not str:
                raise _Irregular
            hosts.append(host.rstrip(".").lower())
    return tuple(ips), tuple(hosts)


def _fast_endpoint_slice(r: _Reader, obj: dict[str, Any], pod_names: bool) -> EndpointSlice:
    """_endpoint_slice for the usual IPv4 or IPv6 slice."""
    atype = obj.get("addressType")
    if atype != "IPv4" and atype != "IPv6":
        raise _Irregular
    labels = r.meta.get("labels")
    service = None
    if labels is not None:
        if type(labels) is not dict:
            raise _Irregular
        service = labels.get(SERVICE_NAME_LABEL)
        if service == "":
            service = None
        elif service is not None:
            if type(service) is not str:
                raise _Irregular
            service = service.lower()
    endpoints = obj.get("endpoints")
    eps = []
    if endpoints is not None:
        if type(endpoints) is not list:
            raise _Irregular
        for e in endpoints:
            if type(e) is not dict:
                raise _Irregular
            addrs = e.get("addresses")
            if addrs is None:
                addrs = ()
            elif type(addrs) is not list:
                raise _Irregular
            for a in addrs:
                if type(a) is not str or not _canonical(a):
                    raise _Irregular
            ready = None
            cond = e.get("conditions")
            if cond is not None:
                if type(cond) is not dict:
                    raise _Irregular
                ready = cond.get("ready")
                if ready is not None and type(ready) is not bool:
                    raise _Irregular
            hostname = e.get("hostname")
            if hostname == "":
                hostname = None
            elif hostname is not None:
                if type(hostname) is not str:
                    raise _Irregular
                hostname = hostname.lower()
            pod = None
            target = e.get("targetRef")
            if target is not None:
                if type(target) is not dict:
                    raise _Irregular
                name = target.get("name")
                if target.get("kind") == "Pod" and isinstance(name, str):
                    pod = name
            eps.append(_entry(tuple(addrs), ready is not False, hostname, pod if pod_names else None))
    ports = _fast_ports(obj.get("ports"), False)
    return EndpointSlice(_namespace(r.meta), r.name, service, atype, tuple(eps), ports)


def _service(r: _Reader, obj: dict[str, Any]) -> Service:
    spec = r.mapping(obj.get("spec"), "spec")
    stype = r.string(spec.get("type"), "spec.type") or "ClusterIP"
    ports = r.ports(spec.get("ports"), "spec.ports", required_number=stype != "ExternalName")
    annotations = r.mapping(r.meta.get("annotations"), "metadata.annotations")
    pna = spec.get("publishNotReadyAddresses") is True or annotations.get(TOLERATE_UNREADY) == "true"
    if stype == "ExternalName":
        ext = r.string(spec.get("externalName"), "spec.externalName", required=True)
        assert ext is not None
        return Service(r.namespace(), r.name, stype, (), False, ext.rstrip(".").lower(), ports, pna)
    raw_ips = spec.get("clusterIPs")
    if raw_ips is None:
        one = spec.get("clusterIP")
        raw_ips = [] if one is None else [one]
    headless = False
    ips = []
    for i, ip in enumerate(r.items(raw_ips, "spec.clusterIPs")):
        if ip == "None":
            headless = True
            continue
        if ip == "":
            continue  # not allocated yet
        ips.append(r.ip(ip, f"spec.clusterIPs[{i}]"))
    external_ips, ingress_ips, hosts = r.external(spec, obj.get("status"))
    return Service(
        r.namespace(), r.name, stype, tuple(ips), headless, None, ports, pna, external_ips, ingress_ips, hosts
    )


def _endpoint_slice(r: _Reader, obj: dict[str, Any], pod_names: bool) -> EndpointSlice | None:
    atype = r.string(obj.get("addressType"), "addressType", required=True)
    if atype == "FQDN":
        return None  # deprecated, never served
    if atype not in ("IPv4", "IPv6"):
        raise r.fail("addressType", f"not IPv4 or IPv6: {atype!r}")
    labels = r.mapping(r.meta.get("labels"), "metadata.labels")
    service = r.string(labels.get(SERVICE_NAME_LABEL), f"metadata.labels[{SERVICE_NAME_LABEL}]")
    eps = []
    for i, e in enumerate(r.items(obj.get("endpoints"), "endpoints")):
        f = f"endpoints[{i}]"
        e = r.mapping(e, f)
        addrs = tuple(
            r.ip(a, f"{f}.addresses[{j}]") for j, a in enumerate(r.items(e.get("addresses"), f + ".addresses"))
        )
        cond = r.mapping(e.get("conditions"), f + ".conditions")
        ready = cond.get("ready")
        if ready is not None and not isinstance(ready, bool):
            raise r.fail(f + ".conditions.ready", "not a boolean")
        hostname = r.string(e.get("hostname"), f + ".hostname")
        target = r.mapping(e.get("targetRef"), f + ".targetRef")
        pod = target.get("name") if target.get("kind") == "Pod" and isinstance(target.get("name"), str) else None
        # unset ready means "unknown", which the API documents as ready
        eps.append(
            _entry(addrs, ready is not False, hostname.lower() if hostname else None, pod if pod_names else None)
        )
    ports = r.ports(obj.get("ports"), "ports", required_number=False)
    return EndpointSlice(r.namespace(), r.name, service.lower() if service else None, atype, tuple(eps), ports)


def _endpoints(r: _Reader, obj: dict[str, Any]) -> Endpoints:
    ns = r.namespace()
    slices = []
    for i, sub in enumerate(r.items(obj.get("subsets"), "subsets")):
        f = f"subsets[{i}]"
        sub = r.mapping(sub, f)
        ports = r.ports(sub.get("ports"), f + ".ports", required_number=False)
        eps: list[Endpoint] = []
        for key, ready in (("addresses", True), ("notReadyAddresses", False)):
            for j, a in enumerate(r.items(sub.get(key), f"{f}.{key}")):
                g = f"{f}.{key}[{j}]"
                a = r.mapping(a, g)
                ip = r.ip(a.get("ip"), g + ".ip")
                host = r.string(a.get("hostname"), g + ".hostname")
                target = r.mapping(a.get("targetRef"), g + ".targetRef")
                pod = (
                    target.get("name") if target.get("kind") == "Pod" and isinstance(target.get("name"), str) else None
                )
                eps.append(Endpoint((ip,), ready, host.lower() if host else None, pod))
        for family in ("IPv4", "IPv6"):
            fam = [e for e in eps if (":" in e.addresses[0]) == (family == "IPv6")]
            if fam:
                slices.append(EndpointSlice(ns, f"{r.name}#{i}{family}", r.name, family, tuple(fam), ports))
    return Endpoints(ns, r.name, tuple(slices))


def _pod(r: _Reader, obj: dict[str, Any]) -> Pod:
    status = r.mapping(obj.get("status"), "status")
    ips: list[str] = []
    for i, p in enumerate(r.items(status.get("podIPs"), "status.podIPs")):
        p = r.mapping(p, f"status.podIPs[{i}]")
        ips.append(r.ip(p.get("ip"), f"status.podIPs[{i}].ip"))
    if not ips and status.get("podIP"):
        ips.append(r.ip(status.get("podIP"), "status.podIP"))
    return Pod(r.namespace(), r.name, tuple(ips), r.meta.get("deletionTimestamp") is not None)


def parse_object(obj: Any, pod_names: bool = True) -> KubeObject | None:
    """Decode one API object (a dict from YAML or JSON); None for kinds DNS ignores.

    `pod_names`: keep endpoints' pod names (only `endpoint_pod_names` publishes them).

    Raises ObjectError naming kind, namespace/name and field when the object is unusable.
    """
    if not isinstance(obj, dict):
        raise ObjectError("<unknown>", "<unnamed>", "(document)", "not a mapping")
    kind = obj.get("kind")
    if kind not in KINDS:
        return None
    api = obj.get("apiVersion")
    if api not in KINDS[kind]:
        return None  # e.g. discovery.k8s.io/v1beta1: not what we read
    r = _Reader(kind, obj)
    if kind == "Service":
        try:
            return _fast_service(r, obj)
        except _Irregular:
            return _service(r, obj)
    if kind == "EndpointSlice":
        try:
            return _fast_endpoint_slice(r, obj, pod_names)
        except _Irregular:
            return _endpoint_slice(r, obj, pod_names)
    if kind == "Endpoints":
        return _endpoints(r, obj)
    if kind == "Pod":
        return _pod(r, obj)
    return Namespace(r.name)
