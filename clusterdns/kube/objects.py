"""Slim copies of Kubernetes API objects: only what DNS answers need.

Manifests (YAML) and the API watch (raw JSON) both decode through `parse_object`,
so a broken object is reported the same way whichever source it came from.
Following CoreDNS's object/ package, we keep a handful of fields per object:
memory per Service and per endpoint is a design constraint at cluster scale.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from typing import Any, Union

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
TOLERATE_UNREADY = "service.alpha.kubernetes.io/tolerate-unready-endpoints"


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


@dataclass(frozen=True, slots=True)
class Endpoint:
    addresses: tuple[str, ...]
    ready: bool
    hostname: str | None
    pod_name: str | None  # targetRef name when it is a Pod (endpoint_pod_names)


@dataclass(frozen=True, slots=True)
class EndpointSlice:
    namespace: str
    name: str
    service: str | None  # from the kubernetes.io/service-name label
    address_type: str  # IPv4, IPv6 (FQDN slices are dropped at parse time)
    endpoints: tuple[Endpoint, ...]
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


KubeObject = Union[Service, EndpointSlice, Endpoints, Pod, Namespace]

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
        name = meta.get("name")
        ns = meta.get("namespace")
        self.ref = f"{ns + '/' if isinstance(ns, str) and ns else ''}{name if isinstance(name, str) else '<unnamed>'}"
        if not isinstance(name, str) or not name:
            raise ObjectError(kind, self.ref, "metadata.name", "missing or not a string")
        self.name = name.lower()
        self.meta = meta

    def fail(self, field: str, problem: str) -> ObjectError:
        return ObjectError(self.kind, self.ref, field, problem)

    def namespace(self) -> str:
        ns = self.meta.get("namespace")
        if ns is None or ns == "":
            return "default"  # kubectl omits nothing, but hand-written YAML often does
        if not isinstance(ns, str):
            raise self.fail("metadata.namespace", "not a string")
        return ns.lower()

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
        try:  # canonical IPv4, nearly every address: libc's parser, ~10 times faster than ipaddress
            if socket.inet_ntop(socket.AF_INET, socket.inet_pton(socket.AF_INET, value)) == value:
                return value
        except (OSError, ValueError):
            pass
        try:
            return str(ipaddress.ip_address(value))
        except ValueError:
            raise self.fail(field, f"not an IP address: {value!r}") from None


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
    return Service(r.namespace(), r.name, stype, tuple(ips), headless, None, ports, pna)


def _endpoint_slice(r: _Reader, obj: dict[str, Any]) -> EndpointSlice | None:
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
        addrs = tuple(r.ip(a, f"{f}.addresses[{j}]") for j, a in enumerate(r.items(e.get("addresses"), f + ".addresses")))
        cond = r.mapping(e.get("conditions"), f + ".conditions")
        ready = cond.get("ready")
        if ready is not None and not isinstance(ready, bool):
            raise r.fail(f + ".conditions.ready", "not a boolean")
        hostname = r.string(e.get("hostname"), f + ".hostname")
        target = r.mapping(e.get("targetRef"), f + ".targetRef")
        pod = target.get("name") if target.get("kind") == "Pod" and isinstance(target.get("name"), str) else None
        # unset ready means "unknown", which the API documents as ready
        eps.append(Endpoint(addrs, ready is not False, hostname.lower() if hostname else None, pod))
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
                pod = target.get("name") if target.get("kind") == "Pod" and isinstance(target.get("name"), str) else None
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


def parse_object(obj: Any) -> KubeObject | None:
    """Decode one API object (a dict from YAML or JSON); None for kinds DNS ignores.

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
        return _service(r, obj)
    if kind == "EndpointSlice":
        return _endpoint_slice(r, obj)
    if kind == "Endpoints":
        return _endpoints(r, obj)
    if kind == "Pod":
        return _pod(r, obj)
    return Namespace(r.name)
