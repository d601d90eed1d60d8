"""Where upstreams come from: flags, a resolv.conf and the kube-dns ConfigMap, and the
one rule for which wins (`choose_upstreams`).

The kube-dns ConfigMap (operators.md 1.6) has two keys, both JSON strings:
`stubDomains` ({"acme.local": ["1.2.3.4"]}) and `upstreamNameservers` (["8.8.8.8"]);
upstreamNameservers replaces the resolv.conf servers for '.'. It is read from a
directory (the ConfigMap mounted as files, as node-cache's `-kubednscm /etc/kube-dns`)
or from a YAML/JSON file (a ConfigMap object, or a plain mapping of the two keys).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from clusterdns.forward.upstream import UpstreamSpec, parse_hostport
from clusterdns.wire.names import to_text, to_wire

log = logging.getLogger("clusterdns.forward")


def resolv_conf_upstreams(path: str | Path) -> list[UpstreamSpec]:
    """The `nameserver` lines of a resolv.conf (`forward . /etc/resolv.conf`)."""
    out = []
    for line in Path(path).read_text().splitlines():
        parts = line.split("#", 1)[0].split(";", 1)[0].split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            try:
                out.append(parse_hostport(parts[1]))
            except ValueError:
                log.warning("%s: ignoring nameserver %r", path, parts[1])
    return out


def parse_stub(text: str) -> tuple[str, list[UpstreamSpec]]:
    """'consul.local=10.150.0.1[:port][,more]' -> ('consul.local.', [UpstreamSpec...])."""
    zone, sep, servers = text.partition("=")
    if not sep or not zone.strip() or not servers.strip():
        raise ValueError(f"stub domain must look like ZONE=IP[:PORT][,IP...], not {text!r}")
    return _zone(zone), [parse_hostport(s) for s in servers.split(",") if s.strip()]


def _zone(text: str) -> str:
    return to_text(to_wire(text))


@dataclass(slots=True)
class KubeDnsConfig:
    """stubDomains and upstreamNameservers from a kube-dns ConfigMap."""

    stub_domains: dict[str, list[UpstreamSpec]] = field(default_factory=dict)
    upstream_nameservers: list[UpstreamSpec] = field(default_factory=list)


def load_kube_dns_configmap(path: str | Path) -> KubeDnsConfig:
    """Read the kube-dns ConfigMap from a mounted directory or a YAML/JSON file."""
    p = Path(path)
    raw: dict[str, Any] = {}
    if p.is_dir():
        for key in ("stubDomains", "upstreamNameservers"):
            f = p / key
            if f.is_file():
                raw[key] = f.read_text()
    else:
        doc = yaml.safe_load(p.read_text()) or {}  # YAML is a superset of JSON
        if not isinstance(doc, dict):
            raise ValueError(f"{p}: expected a mapping or a ConfigMap")
        raw = doc.get("data", doc) if doc.get("kind") == "ConfigMap" else doc
        raw = raw or {}
    cfg = KubeDnsConfig()
    stubs = _json_value(raw.get("stubDomains"), {}, p, "stubDomains")
    if not isinstance(stubs, dict):
        raise ValueError(f"{p}: stubDomains must be a map of domain to server list")
    for zone, servers in stubs.items():
        if not isinstance(servers, list) or not servers:
            raise ValueError(f"{p}: stubDomains[{zone!r}] must be a non-empty list")
        cfg.stub_domains[_zone(zone)] = [parse_hostport(str(s)) for s in servers]
    ups = _json_value(raw.get("upstreamNameservers"), [], p, "upstreamNameservers")
    if not isinstance(ups, list):
        raise ValueError(f"{p}: upstreamNameservers must be a list")
    cfg.upstream_nameservers = [parse_hostport(str(s)) for s in ups]
    return cfg


def _json_value(value: Any, empty: Any, path: Path, key: str) -> Any:
    """ConfigMap values are JSON strings; a YAML file may hold the structure itself."""
    if value is None or value == "":
        return empty
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: {key} is not valid JSON: {exc}") from None
    return value


def choose_upstreams(
    upstreams: list[UpstreamSpec],
    stubs: Mapping[str, list[UpstreamSpec]],
    configmap: KubeDnsConfig | None,
    resolv_conf: str | Path | None,
) -> tuple[list[UpstreamSpec], dict[str, list[UpstreamSpec]]]:
    """The servers for '.' and the stub domains, from every source (serve and node-cache).

    '.': the `upstreams` flag, else the ConfigMap's upstreamNameservers, else the
    nameservers of `resolv_conf`, read only then (None: no such fallback). Stub domains:
    the ConfigMap's, each replaced by a flag's stub for the same zone. The callers have
    parsed the flags and loaded the ConfigMap. Raises OSError when resolv.conf cannot be
    read and ValueError when it lists no nameserver.
    """
    default: list[UpstreamSpec] = []
    stub_map: dict[str, list[UpstreamSpec]] = {}
    if configmap is not None:
        stub_map.update(configmap.stub_domains)
        default = configmap.upstream_nameservers
    stub_map.update(stubs)
    if upstreams:
        default = upstreams
    if not default and resolv_conf is not None:
        default = resolv_conf_upstreams(resolv_conf)
        if not default:
            raise ValueError(f"{resolv_conf} lists no nameserver; pass --upstream")
    return default, stub_map
