"""The config file of both modes: dataclasses, the YAML loader, and the merge with flags.

One YAML file holds everything the flags set (`clusterdns serve --config FILE`,
`clusterdns node-cache --config FILE`). Keys are the flag names with underscores
(`--log-format` is `log_format`); forwarding cache and upstream tuning sit in the `cache`
and `forward` sections. Every option has a default and a one-line reason: the docstring
under the field (kopf's `configuration.py` habit), which `reference()` turns into the
README table.

Precedence: built-in defaults < the file < the flags the user actually typed
(`explicit_flags`), so `--ttl 5` wins over `ttl: 30` even though 5 is the default.

Unknown keys, wrong types and impossible values stop start-up with the file, the line,
the key path (`cache.max_ttl`) and what was expected, all problems at once: an operator
editing a ConfigMap should not fix them one restart at a time. `clusterdns check-config`
prints the same without starting.

The node-cache schema is `nodecache_config.NodeCacheConfig` (the forwarding code's own
settings) plus the logging, metrics and lifecycle options shared with `serve`.
"""

from __future__ import annotations

import argparse
import ast
import copy
import inspect
import os
import re
import textwrap
from collections.abc import Callable, Iterable
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml

from clusterdns.net import addr
from clusterdns.settings import nodecache as nodecache_config, typedyaml
from clusterdns.settings.nodecache import ForwardSettings, RRLSettings
from clusterdns.settings.typedyaml import Check, Problems, Rules

MODES = ("serve", "node-cache")
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
PODS_MODES = ("disabled", "insecure", "verified")  # cluster.compile.PODS_MODES, without its imports
POLICIES = ("random", "round_robin", "sequential")


class ConfigError(nodecache_config.ConfigError):
    """One or more problems in a config file or in flags; `problems` lists them all.

    A subclass of node-cache's ConfigError so the code paths that already catch that
    one report these too.
    """

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


# --------------------------------------------------------------------------- schema


@dataclass
class ServeCacheSettings:
    """The cache in front of forwarded names in `serve` mode (kubeadm's `cache 30`).

    The cluster zone is never cached here: its answers come from the watch cache, as in
    kubeadm's Corefile (`disable success/denial cluster.local`).
    """

    max_entries: int = 9984
    """Entries per forward zone (CoreDNS's capacity); least recently used evicted beyond."""
    max_denial_entries: int = 9984
    """NXDOMAIN/NODATA/SERVFAIL entries per forward zone, kept apart (CoreDNS `denial
    CAPACITY`): a flood of unknown names evicts denials only, never positive answers."""
    success_ttl: int = 30
    """Cap on positive TTLs, kubeadm's `cache 30`: upstream changes show within 30 s."""
    denial_ttl: int = 30
    """Cap on NXDOMAIN/NODATA TTLs (`cache 30` caps both)."""
    min_ttl: int = 5
    """Floor on cached TTLs (CoreDNS MINTTL): a TTL-0 answer still spares the upstream."""
    servfail_ttl: int = 5
    """Upstream SERVFAIL kept this long (CoreDNS `servfail 5s`) so a broken zone is not hammered."""
    serve_stale: float = 3600.0
    """Seconds past expiry an answer may still be served when upstreams fail (RFC 8767); 0 = off."""
    stale_ttl: int = 30
    """TTL on stale answers (RFC 8767 section 4 recommends 30 s)."""
    stale_answer_timeout: float = 1.8
    """Wait this long for a slow upstream before the stale answer goes out (RFC 8767 section 5)."""
    stale_recheck: float = 5.0
    """After a failed refresh, serve stale without asking upstream for this long."""
    prefetch: int = 0
    """Refresh an entry asked this many times before it expires; 0 = off (CoreDNS default)."""
    prefetch_percentage: int = 10
    """Prefetch when less than this share of the TTL is left (CoreDNS default 10%)."""


@dataclass
class CommonSettings:
    """Logging, metrics and lifecycle: the same keys in both modes."""

    log_level: str = "info"
    """debug, info, warning or error; info logs lifecycle and problems, never per query."""
    log_format: str = "text"
    """text (CoreDNS-like lines people grep) or json (one object per line for log shippers)."""
    query_log: bool = False
    """Log every answered query in CoreDNS's common format; off, as it costs throughput."""
    query_log_sample: int = 1
    """Log one query in N when the query log is on; raise it on busy servers."""
    error_consolidate: float = 10.0
    """Repeated identical errors within this many seconds become one line with a count (CoreDNS
    `errors { consolidate }`), so a flood cannot fill the disk; 0 logs every one."""
    lameduck: float = 5.0
    """After SIGTERM, fail /ready but keep answering this long so endpoints drain (kubeadm's
    `health { lameduck 5s }`)."""
    shutdown_timeout: float = 5.0
    """After the listeners close, wait at most this long for in-flight queries and TCP answers."""
    watch_config: bool = False
    """Re-read this file when it changes (a ConfigMap mount updates by symlink swap); SIGHUP
    always re-reads it."""


@dataclass
class ServeConfig(CommonSettings):
    """`clusterdns serve`: the cluster DNS (the CoreDNS role)."""

    listen: list[str] = field(default_factory=lambda: ["0.0.0.0:53"])
    """UDP+TCP addresses, HOST:PORT or [v6]:PORT; CoreDNS answers on :53 of every address."""
    zone: str = "cluster.local"
    """The cluster domain; must match kubelet's --cluster-domain."""
    ttl: int = 5
    """TTL of cluster answers and of negative answers (CoreDNS default; kubeadm sets 30)."""
    pods: str = "insecure"
    """Pod records a-b-c-d.NS.pod.ZONE: disabled, insecure (kube-dns compatible, kubeadm) or
    verified (only existing pod IPs; watches every Pod, costly)."""
    endpoint_pod_names: bool = False
    """Name hostname-less endpoints by their pod name instead of the dashed IP (CoreDNS option)."""
    ignore_empty_service: bool = False
    """ClusterIP Services without ready endpoints answer NXDOMAIN (CoreDNS option)."""
    max_udp: int = 1232
    """Largest UDP answer for EDNS clients (DNS flag day 2020: no IP fragmentation)."""
    tcp_idle_timeout: float = 10.0
    """Close a TCP connection idle this long (RFC 7766 6.2.3 lets servers reclaim them)."""
    max_tcp_connections: int = 1024
    """Open TCP connections at most; beyond it new ones are closed so memory stays bounded."""
    workers: int = 1
    """Processes answering on the same port (SO_REUSEPORT), one per core; one owns the source."""
    manifests: list[str] = field(default_factory=list)
    """Kubernetes YAML files or folders to serve instead of a live cluster (demos, tests)."""
    kubeconfig: str | None = None
    """kubeconfig path; null = the pod's service account, else $KUBECONFIG or ~/.kube/config."""
    context: str | None = None
    """kubeconfig context; null = its current-context."""
    namespaces: list[str] = field(default_factory=list)
    """Only these namespaces exist (CoreDNS `namespaces`); empty = all."""
    labels: str | None = None
    """Label selector for Services and EndpointSlices (CoreDNS `labels`), for the API and manifests."""
    sync_timeout: float = 5.0
    """Wait this long for the first API sync, then serve anyway, SERVFAIL for unknown names
    (CoreDNS `startup_timeout`)."""
    health: str | None = None
    """/health address, HOST:PORT or ${POD_IP}:PORT (host from that env var); null = :8080 (every
    address, CoreDNS's) with the API, off with manifests."""
    ready: str | None = None
    """/ready address, HOST:PORT or ${POD_IP}:PORT; null = :8181 (every address, CoreDNS's) with
    the API, off with manifests."""
    metrics: str | None = None
    """/metrics address, HOST:PORT or ${POD_IP}:PORT; null = :9153 (every address; CoreDNS's port,
    dashboards expect it) with the API, off with manifests."""
    upstreams: list[str] = field(default_factory=list)
    """Servers for names outside the cluster zone (HOST[:PORT], [v6]:PORT, tcp://HOST); with
    none of upstreams/resolv_conf/stub_domains/kube_dns_configmap such names are REFUSED."""
    resolv_conf: str | None = None
    """Forward to this resolv.conf's nameservers (kubeadm: `forward . /etc/resolv.conf`)."""
    stub_domains: dict[str, list[str]] = field(default_factory=dict)
    """Zone -> its own servers, e.g. {consul.local: [10.150.0.1]} (kube-dns stubDomains)."""
    kube_dns_configmap: str | None = None
    """A kube-dns ConfigMap (stubDomains, upstreamNameservers), mounted directory or YAML/JSON."""
    loop_detect: bool = True
    """Probe for a forwarding loop at start and exit non-zero with the cause (CoreDNS `loop`)."""
    cache: ServeCacheSettings = field(default_factory=ServeCacheSettings)
    """Cache for forwarded names."""
    forward: ForwardSettings = field(default_factory=ForwardSettings)
    """Upstream handling, shared with node-cache."""
    rrl: RRLSettings = field(default_factory=RRLSettings)
    """Response-rate limiting of UDP answers, shared with node-cache; off by default."""

    def options_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `app.ServeOptions` (kept apart so config does not import app)."""
        return dict(
            manifests=list(self.manifests), listen=list(self.listen), zone=self.zone, ttl=self.ttl,
            pods=self.pods, endpoint_pod_names=self.endpoint_pod_names,
            ignore_empty_service=self.ignore_empty_service, max_udp=self.max_udp,
            tcp_idle_timeout=self.tcp_idle_timeout, max_tcp_connections=self.max_tcp_connections,
            kubeconfig=self.kubeconfig, context=self.context,
            namespaces=tuple(self.namespaces), labels=self.labels, sync_timeout=self.sync_timeout,
            health=self.health, ready=self.ready, lameduck=self.lameduck,
            upstreams=list(self.upstreams), resolv_conf=self.resolv_conf,
            stubs=[f"{zone}={','.join(servers)}" for zone, servers in self.stub_domains.items()],
            kube_dns_configmap=self.kube_dns_configmap, loop_detect=self.loop_detect,
            workers=self.workers, cache_opts=self.cache_opts(), forward_opts=self.forward_opts(),
            metrics=self.metrics, query_log=self.query_log, query_log_sample=self.query_log_sample,
            log_level=self.log_level, log_format=self.log_format, error_consolidate=self.error_consolidate,
            shutdown_timeout=self.shutdown_timeout, watch_config=self.watch_config, rrl_opts=rrl_opts(self.rrl))

    def cache_opts(self) -> dict[str, Any]:
        """`ResponseCache` keyword arguments for forwarded names."""
        return cache_opts(self.cache, self.cache.success_ttl, self.cache.denial_ttl)

    def forward_opts(self) -> dict[str, Any]:
        """`Forwarder` keyword arguments."""
        return {f.name: getattr(self.forward, f.name) for f in fields(self.forward)}


@dataclass
class NodeCacheFileConfig(nodecache_config.NodeCacheConfig, CommonSettings):
    """`clusterdns node-cache`: node-cache's own settings plus the shared ones.

    A subclass, so `nodecache.serve()` takes it as it is.
    """

    metrics: str | None = None
    """/metrics address, HOST:PORT or ${POD_IP}:PORT; null = off, so test and side-by-side caches
    do not fight over a port. Deployments set node-local-dns's `:9253` (config/node-cache.yaml does)."""
    lameduck: float = 0.0
    """0: pods reach the node cache by a link-local IP, not through Service endpoints, so
    there is nothing to drain."""


#: docs of node-cache fields that have no docstring in nodecache_config.py
_INHERITED_DOCS = {
    "cluster_domain": "The cluster domain; its names go to cluster_dns, never to upstreams.",
    "resolv_conf": "Nameservers for other names when upstreams and the ConfigMap give none "
                   "(the node's, with dnsPolicy Default).",
    "max_udp": "Largest UDP answer for EDNS clients (DNS flag day 2020: no IP fragmentation).",
    "tcp_idle_timeout": "Close a TCP connection idle this long (RFC 7766 6.2.3).",
    "max_tcp_connections": "Open TCP connections at most; beyond it new ones are closed.",
    "log_level": "debug, info, warning or error; info logs lifecycle and problems, never per query.",
}

SCHEMAS: dict[str, type] = {"serve": ServeConfig, "node-cache": NodeCacheFileConfig}
AnyConfig = ServeConfig | NodeCacheFileConfig


def cache_opts(c: Any, max_ttl: int, max_negative_ttl: int) -> dict[str, Any]:
    """ResponseCache keyword arguments from a cache settings section (both modes)."""
    return dict(max_entries=c.max_entries, max_denial_entries=c.max_denial_entries,
                max_ttl=max_ttl, min_ttl=c.min_ttl,
                max_negative_ttl=max_negative_ttl, min_negative_ttl=c.min_ttl,
                servfail_ttl=c.servfail_ttl, prefetch=c.prefetch,
                prefetch_percentage=c.prefetch_percentage, serve_stale=c.serve_stale,
                stale_ttl=c.stale_ttl, stale_answer_timeout=c.stale_answer_timeout,
                stale_recheck=c.stale_recheck)


def rrl_opts(r: RRLSettings) -> dict[str, Any] | None:
    """`server.rrl.RRL` keyword arguments from an `rrl` section (both modes); None: off."""
    if not r.responses_per_second:
        return None
    return {f.name: getattr(r, f.name) for f in fields(r)}


# --------------------------------------------------------------------------- value checks

_LABEL = re.compile(r"^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$")
_NS_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")  # RFC 1123 label, what the API allows

def _between(lo: float, hi: float | None = None, unit: str = "") -> Check:
    def check(v: Any) -> str | None:
        if v < lo or (hi is not None and v > hi):
            span = f"{lo:g}..{hi:g}" if hi is not None else f"at least {lo:g}"
            return f"{span}{unit}"
        return None
    return check


def _above(lo: float, unit: str = "") -> Check:
    def check(v: Any) -> str | None:
        return None if v > lo else f"more than {lo:g}{unit}"
    return check


def _one_of(*choices: str) -> Check:
    def check(v: Any) -> str | None:
        return None if v in choices else f"one of {', '.join(choices)}"
    return check


def _domain(v: str) -> str | None:
    name = v.strip().rstrip(".").lower()
    if name == "":
        return None if v.strip() == "." else "a domain name such as cluster.local"
    if len(name) > 253 or not all(_LABEL.match(label) for label in name.split(".")):
        return "a domain name such as cluster.local (labels a-z 0-9 -, at most 63 characters)"
    return None


def _namespace(v: str) -> str | None:
    return None if _NS_NAME.match(v) else "a namespace name (lowercase RFC 1123 label)"


def _host_port(v: str, what: str = "an address") -> tuple[str, int] | str:
    """(host, port, -1 when none is written) or an expectation (the grammar: net/addr.py)."""
    try:
        host, port = addr.split(v)
    except addr.AddressError:
        return f"{what} like [::1]:53"
    try:
        number = -1 if port is None else addr.port_number(v, port)
    except addr.AddressError:
        return f"{what} with a port 0..65535"
    if host and not addr.is_ip(host):
        return f"{what} whose host is an IP address literal (names are never resolved)"
    return host, number


def _listen(v: str) -> str | None:
    r = _host_port(v, "a listen address HOST:PORT")
    return r if isinstance(r, str) else None


def _http_address(v: str) -> str | None:
    """HOST:PORT, :PORT, [v6]:PORT, or ${VAR}:PORT: the host read from $VAR at start-up."""
    from clusterdns.obs.bind import ENV_REF  # no HTTP server there

    if v == "":
        return None  # off (node-cache's `--health ""`)
    try:
        host, _ = addr.split(v)
    except addr.AddressError:
        return "an address HOST:PORT, :PORT or ${VAR}:PORT"
    m = ENV_REF.match(host)
    if m:  # checked when it is read (obs/bind.py); here only the shape around it
        v = v.replace(m.group(0), "::" if v.startswith("[") else "0.0.0.0", 1)
    elif "$" in host:
        return "an address HOST:PORT, :PORT or ${VAR}:PORT (a variable as ${POD_IP}, braces and all)"
    r = _host_port(v, "an address HOST:PORT, :PORT or ${VAR}:PORT")
    if isinstance(r, str):
        return r
    return None if r[1] >= 0 else "an address HOST:PORT, :PORT or ${VAR}:PORT (the port is needed)"


def _upstream(v: str) -> str | None:
    s = v.strip()
    for prefix in ("tcp://", "dns://", "udp://"):
        s = s.removeprefix(prefix)
    if not s:
        return "a server HOST[:PORT], [v6]:PORT or tcp://HOST"
    r = _host_port(s, "a server HOST[:PORT], [v6]:PORT or tcp://HOST")
    if isinstance(r, str):
        return r
    return None if r[0] and r[1] != 0 else "a server HOST[:PORT] with an IP address and a port 1..65535"


def _label_selector(v: str) -> str | None:
    from clusterdns.kube.selector import SelectorError, parse_selector

    expected = "a label selector such as 'app=web,tier!=test'"
    if not v.strip() or "\n" in v:
        return expected
    try:
        parse_selector(v)
    except SelectorError as exc:
        return f"{expected} ({exc.problem})"
    return None


#: key path -> check; `[]` applies to each list item, `{}` to each mapping key
CHECKS: dict[str, Check] = {
    "listen[]": _listen,
    "zone": _domain,
    "cluster_domain": _domain,
    "reverse_zones[]": _domain,
    "ttl": _between(0, 3600, " seconds (CoreDNS's range)"),
    "pods": _one_of(*PODS_MODES),
    "max_udp": _between(512, 65535, " bytes"),
    "tcp_idle_timeout": _above(0, " seconds"),
    "max_tcp_connections": _between(1),
    "workers": _between(1, 256),
    "namespaces[]": _namespace,
    "labels": _label_selector,
    "sync_timeout": _between(0, None, " seconds"),
    "health": _http_address,
    "ready": _http_address,
    "metrics": _http_address,
    "cluster_dns": _upstream,
    "upstreams[]": _upstream,
    "stub_domains{}": _domain,
    "stub_domains{}[]": _upstream,
    "log_level": _one_of(*LOG_LEVELS),
    "log_format": _one_of(*LOG_FORMATS),
    "query_log_sample": _between(1),
    "error_consolidate": _between(0, None, " seconds"),
    "lameduck": _between(0, 600, " seconds"),
    "shutdown_timeout": _between(0, 600, " seconds"),
    "cache.max_entries": _between(1),
    "cache.max_denial_entries": _between(1),
    "cache.success_ttl": _between(0, 604800, " seconds"),
    "cache.denial_ttl": _between(0, 604800, " seconds"),
    "cache.cluster_success_ttl": _between(0, 604800, " seconds"),
    "cache.cluster_denial_ttl": _between(0, 604800, " seconds"),
    "cache.min_ttl": _between(0, 604800, " seconds"),
    "cache.servfail_ttl": _between(0, 300, " seconds (RFC 2308 7.1 caps it at 5 minutes)"),
    "cache.serve_stale": _between(0, 604800, " seconds (RFC 8767 suggests at most 7 days)"),
    "cache.stale_ttl": _between(1, 86400, " seconds"),
    "cache.stale_answer_timeout": _between(0, 60, " seconds"),
    "cache.stale_recheck": _between(0, 86400, " seconds"),
    "cache.prefetch": _between(0),
    "cache.prefetch_percentage": _between(0, 100, " percent"),
    "forward.policy": _one_of(*POLICIES),
    "forward.max_fails": _between(0),
    "forward.health_interval": _above(0, " seconds"),
    "forward.read_timeout": _above(0, " seconds"),
    "forward.timeout": _above(0, " seconds"),
    "forward.expire": _between(0, None, " seconds"),
    "forward.max_concurrent": _between(1),
    "rrl.responses_per_second": _between(0, None, " per second (0 = off)"),
    "rrl.window": _between(1, 3600, " seconds"),
    "rrl.slip": _between(0, 10, " (0 = drop all, 1 = truncate all)"),
    "rrl.ipv4_prefix_length": _between(0, 32, " bits"),
    "rrl.ipv6_prefix_length": _between(0, 128, " bits"),
    "rrl.max_table_size": _between(1),
}


#: shown when a value has the wrong type, for keys where the shape is not obvious
EXAMPLES: dict[str, str] = {"metrics": "':9153'", "health": "':8080'", "ready": "':8181'", "listen[]": "'0.0.0.0:53'",
            "cluster_dns": "'10.96.0.11:53'", "upstreams[]": "'10.0.0.2:53'"}

RULES = Rules(CHECKS, EXAMPLES)


def _cross_checks(cfg: Any) -> list[tuple[str, str]]:
    """Rules between keys: (key path, problem)."""
    out: list[tuple[str, str]] = []
    c = cfg.cache
    caps = [("success_ttl", c.success_ttl), ("denial_ttl", c.denial_ttl)]
    if isinstance(cfg, NodeCacheFileConfig):
        caps += [("cluster_success_ttl", c.cluster_success_ttl), ("cluster_denial_ttl", c.cluster_denial_ttl)]
    for name, cap in caps:
        if c.min_ttl > cap:
            out.append(("cache.min_ttl", f"expected at most cache.{name} ({cap}), got {c.min_ttl}"))
            break
    if cfg.forward.read_timeout > cfg.forward.timeout:
        out.append(("forward.read_timeout", f"expected at most forward.timeout ({cfg.forward.timeout:g}), "
                                            f"got {cfg.forward.read_timeout:g}"))
    if isinstance(cfg, ServeConfig):
        if cfg.manifests and (cfg.kubeconfig or cfg.context):
            out.append(("manifests", "expected either manifests or kubeconfig/context: serve files or a cluster"))
        if not cfg.listen:
            out.append(("listen", "expected at least one address"))
    elif not cfg.listen:
        out.append(("listen", "expected at least one address"))
    return out


# --------------------------------------------------------------------------- public API


def parse(data: Any, mode: str = "serve", source: str = "<config>") -> AnyConfig:
    """Validate already-loaded YAML (a mapping or None) into the mode's dataclass."""
    if mode not in SCHEMAS:
        raise ValueError(f"mode must be one of {MODES}")
    problems = Problems(source)
    cfg = SCHEMAS[mode]()
    if data is None:
        data = {}
    if not isinstance(data, dict):
        problems.add("", None, f"expected a mapping of settings at the top, got {typedyaml._got(data)}")
        raise ConfigError(problems.items)
    typedyaml.fill(RULES, cfg, data, "", problems, None)
    if not problems.items:
        lines = getattr(data, "lines", {})
        for path, message in _cross_checks(cfg):
            problems.add(path, lines.get(path.split(".")[0]), message)
    if problems.items:
        raise ConfigError(problems.items)
    return cfg


def read_yaml(path: str | Path) -> Any:
    """The YAML document in `path`, with line numbers kept; ConfigError if unreadable."""
    try:
        return typedyaml.read_yaml(path)
    except typedyaml.YAMLError as exc:
        raise ConfigError(exc.problems) from None


def parse_text(text: str, source: str) -> Any:
    """YAML text (a README snippet, a ConfigMap value) with line numbers kept."""
    try:
        return typedyaml.parse_text(text, source)
    except typedyaml.YAMLError as exc:
        raise ConfigError(exc.problems) from None


def load(path: str | Path, mode: str = "serve") -> AnyConfig:
    """Defaults overlaid with the YAML file; ConfigError lists every problem."""
    return parse(read_yaml(path), mode, str(path))


def guess_mode(data: Any) -> str:
    """The mode a file is written for: the schema that knows most of its top-level keys
    (ties: serve), so the errors shown are about values, not about the wrong schema."""
    keys = [str(k).replace("-", "_") for k in data] if isinstance(data, dict) else []
    known = {mode: sum(k in {f.name for f in fields(SCHEMAS[mode])} for k in keys) for mode in MODES}
    return max(MODES, key=lambda m: (known[m], m == "serve"))


def check_references(cfg: AnyConfig) -> list[str]:
    """Problems with the files a valid config points to, that start-up would hit."""
    from clusterdns.forward.sources import load_kube_dns_configmap  # the forwarding code's reader

    out: list[str] = []
    if cfg.kube_dns_configmap:
        try:
            load_kube_dns_configmap(cfg.kube_dns_configmap)
        except (OSError, ValueError, yaml.YAMLError) as exc:
            out.append(f"kube_dns_configmap: {getattr(exc, 'strerror', None) or exc}")
    if isinstance(cfg, ServeConfig):
        for i, m in enumerate(cfg.manifests):
            if not Path(m).exists():
                out.append(f"manifests[{i}]: {m}: no such file or folder")
        if cfg.kubeconfig and not Path(cfg.kubeconfig).is_file():
            out.append(f"kubeconfig: {cfg.kubeconfig}: no such file")
    resolv = cfg.resolv_conf
    if resolv and not cfg.upstreams and not Path(resolv).is_file():
        out.append(f"resolv_conf: {resolv}: no such file (set upstreams instead)")
    return out


# --------------------------------------------------------------------------- flags


@dataclass(frozen=True)
class Flag:
    """How one flag's parsed value lands in the config."""

    path: str
    convert: Callable[[Any], Any] = lambda v: v
    merge: bool = False  # a mapping flag adds its keys to the file's instead of replacing them


def _stub_flags(values: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for text in values:
        zone, sep, servers = text.partition("=")
        if not sep or not zone.strip():
            raise ConfigError([f"command line: --stub: stub domain must look like ZONE=IP[:PORT][,IP...], "
                               f"not {text!r}"])
        out[zone.strip()] = [s.strip() for s in servers.split(",") if s.strip()]
    return out


#: flag dests whose config key is not simply the dest (everything else: dest == key)
FLAG_KEYS: dict[str, Flag] = {
    "upstream": Flag("upstreams"),
    "stub": Flag("stub_domains", _stub_flags, merge=True),
    "no_loop_detect": Flag("loop_detect", lambda v: not v),
    "cluster_udp": Flag("cluster_force_tcp", lambda v: not v),
    "serve_stale": Flag("cache.serve_stale"),
    "prefetch": Flag("cache.prefetch"),
    "cache_denial_entries": Flag("cache.max_denial_entries"),
    "max_concurrent": Flag("forward.max_concurrent"),
    "policy": Flag("forward.policy"),
    "rrl_responses_per_second": Flag("rrl.responses_per_second"),
    "rrl_window": Flag("rrl.window"),
    "rrl_slip": Flag("rrl.slip"),
    "rrl_ipv4_prefix_length": Flag("rrl.ipv4_prefix_length"),
    "rrl_ipv6_prefix_length": Flag("rrl.ipv6_prefix_length"),
    "rrl_max_table_size": Flag("rrl.max_table_size"),
}

#: flag dests that are not settings
NOT_SETTINGS = frozenset({"command", "config", "help", "version"})


def explicit_flags(parser: argparse.ArgumentParser, argv: list[str] | None) -> set[str]:
    """The dests of the flags present on the command line (also those equal to a default).

    Parses `argv` again with every default suppressed, the only way argparse tells "given"
    from "defaulted"; the parser is restored afterwards.
    """
    saved: list[tuple[Any, str, Any]] = []

    def suppress(p: argparse.ArgumentParser) -> None:
        saved.append((p, "_defaults", p._defaults))
        p._defaults = {}
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    suppress(sub)
            else:
                saved.append((action, "default", action.default))
                action.default = argparse.SUPPRESS

    suppress(parser)
    try:
        ns, _ = parser.parse_known_args(argv)
    finally:
        for obj, attr, value in reversed(saved):
            setattr(obj, attr, value)
    return set(vars(ns)) - NOT_SETTINGS


def apply_flags(cfg: AnyConfig, args: argparse.Namespace, given: Iterable[str]) -> AnyConfig:
    """A copy of `cfg` with the given flags applied and checked like file values."""
    out = copy.deepcopy(cfg)
    problems = Problems("command line")
    for dest in sorted(given):
        if dest in NOT_SETTINGS:
            continue
        flag = FLAG_KEYS.get(dest, Flag(dest))
        parts = flag.path.split(".")
        owner = out
        for part in parts[:-1]:
            owner = getattr(owner, part)
        if parts[-1] not in {f.name for f in fields(owner)}:
            continue  # a flag of the other mode, or not a setting
        value = flag.convert(getattr(args, dest))
        if isinstance(value, tuple):
            value = list(value)
        if flag.merge:
            value = {**getattr(owner, parts[-1]), **value}
        name = "--" + dest.replace("_", "-")
        conv = typedyaml.convert(RULES, typedyaml.hints(type(owner))[parts[-1]], value, name, flag.path, None,
                                 problems)
        if conv is not MISSING:
            setattr(owner, parts[-1], conv)
    if problems.items:
        raise ConfigError(problems.items)
    cross = _cross_checks(out)
    if cross:
        raise ConfigError([f"command line and config: {p}: {m}" for p, m in cross])
    return out


def unmapped_flags(parser: argparse.ArgumentParser, mode: str) -> list[str]:
    """Dests of `mode`'s subcommand that map to no config key (a test keeps this empty)."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[mode]
    cfg = SCHEMAS[mode]()
    out = []
    for action in sub._actions:
        dest = action.dest
        if dest in NOT_SETTINGS or dest == argparse.SUPPRESS:
            continue
        owner, *_rest = FLAG_KEYS.get(dest, Flag(dest)).path.split(".")
        if not hasattr(cfg, owner):
            out.append(dest)
    return out


# --------------------------------------------------------------------------- reload

#: keys a reload cannot apply to a running process: sockets, the record source (a new
#: one would drop the watch cache), the process layout; they need a restart
RESTART_ONLY = frozenset({"listen", "health", "ready", "metrics", "workers", "manifests", "kubeconfig",
                          "context", "namespaces", "labels", "pods", "endpoint_pod_names", "sync_timeout",
                          "watch_config"})


def changed_keys(old: AnyConfig, new: AnyConfig) -> list[str]:
    """Top-level keys (sections count as one) whose value differs, in schema order."""
    return [f.name for f in fields(old) if getattr(old, f.name) != getattr(new, f.name)]


def split_reload(old: AnyConfig, new: AnyConfig) -> tuple[list[str], list[str]]:
    """(keys a reload applies, keys that wait for a restart)."""
    changed = changed_keys(old, new)
    return [k for k in changed if k not in RESTART_ONLY], [k for k in changed if k in RESTART_ONLY]


def with_restart_keys(old: AnyConfig, new: AnyConfig) -> AnyConfig:
    """`new`, but with the restart-only keys kept at their running values."""
    out = copy.deepcopy(new)
    for key in RESTART_ONLY:
        if hasattr(out, key):
            setattr(out, key, copy.deepcopy(getattr(old, key)))
    return out


# --------------------------------------------------------------------------- docs


def field_docs(cls: type) -> dict[str, str]:
    """Field name -> the docstring under it, from the class and its bases (kopf style)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):  # pragma: no cover - no source (frozen app)
            continue
        body = tree.body[0].body  # type: ignore[attr-defined]
        for stmt, after in zip(body, body[1:] + [None], strict=True):
            if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                if (isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                        and isinstance(after.value.value, str)):
                    docs[stmt.target.id] = " ".join(after.value.value.split())
    for name, doc in _INHERITED_DOCS.items():
        docs.setdefault(name, doc)
    return docs


def reference(mode: str) -> list[tuple[str, str, str]]:
    """(key path, default as YAML, reason) for every option of `mode`: the README table."""
    rows: list[tuple[str, str, str]] = []

    common = {f.name for f in fields(CommonSettings)}

    def walk(obj: Any, prefix: str) -> None:
        docs = field_docs(type(obj))
        # the mode's own keys first, then logging/lifecycle, then the sections
        order = sorted(fields(obj), key=lambda f: (is_dataclass(getattr(obj, f.name)), f.name in common))
        for f in order:
            value = getattr(obj, f.name)
            if is_dataclass(value):
                walk(value, f"{prefix}{f.name}.")
                continue
            default = yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
            rows.append((prefix + f.name, default, docs.get(f.name, "")))

    walk(SCHEMAS[mode](), "")
    return rows


def main_check(path: str, mode: str | None = None) -> tuple[int, list[str]]:
    """`clusterdns check-config FILE`: (exit code, lines to print)."""
    try:
        data = read_yaml(path)
        mode = mode or guess_mode(data)
        cfg = parse(data, mode, path)
    except ConfigError as exc:
        return 1, exc.problems
    refs = check_references(cfg)
    if refs:
        return 1, [f"{path}: {r}" for r in refs]
    return 0, [f"{path}: OK ({mode})"]


# --------------------------------------------------------------------------- node-cache flags


def load_config(path: str | Path | None) -> nodecache_config.NodeCacheConfig:
    """Defaults overlaid with the YAML file, if any.

    A file is read by the loader shared with `serve` (clusterdns.settings.config), which knows
    these settings plus the common ones (metrics, logs, lifecycle) and reports every
    problem with its line; its result is a NodeCacheConfig subclass.
    """
    if path is not None:
        return load(path, "node-cache")  # type: ignore[return-value]
    cfg = nodecache_config.NodeCacheConfig()
    if isinstance(cfg.listen, str):
        cfg.listen = [cfg.listen]
    if isinstance(cfg.upstreams, str):
        cfg.upstreams = [cfg.upstreams]
    return cfg


def from_args(args: argparse.Namespace, environ: dict[str, str] | None = None) -> nodecache_config.NodeCacheConfig:
    """The config file overlaid with the flags that were given."""
    env = os.environ if environ is None else environ
    cfg = load_config(args.config)
    if args.listen:
        cfg.listen = args.listen
    for flag, name in (("health", "health"), ("cluster_domain", "cluster_domain"),
                       ("cluster_dns", "cluster_dns"), ("resolv_conf", "resolv_conf"),
                       ("kube_dns_configmap", "kube_dns_configmap"), ("log_level", "log_level")):
        value = getattr(args, flag)
        if value is not None:
            setattr(cfg, name, value)
    if args.cluster_udp:
        cfg.cluster_force_tcp = False
    if args.upstream:
        cfg.upstreams = args.upstream
    for stub in args.stub or ():
        zone, sep, servers = stub.partition("=")
        if not sep:
            raise nodecache_config.ConfigError(f"--stub must look like ZONE=IP[:PORT][,IP...], not {stub!r}")
        cfg.stub_domains[zone] = [s for s in servers.split(",") if s]
    if args.serve_stale is not None:
        cfg.cache.serve_stale = args.serve_stale
    if args.prefetch is not None:
        cfg.cache.prefetch = args.prefetch
    if args.cache_denial_entries is not None:
        cfg.cache.max_denial_entries = args.cache_denial_entries
    if args.max_concurrent is not None:
        cfg.forward.max_concurrent = args.max_concurrent
    if args.policy is not None:
        cfg.forward.policy = args.policy
    if args.no_loop_detect:
        cfg.loop_detect = False
    for name in ("responses_per_second", "window", "slip", "ipv4_prefix_length", "ipv6_prefix_length",
                 "max_table_size"):
        value = getattr(args, "rrl_" + name, None)
        if value is not None:
            setattr(cfg.rrl, name, value)
    return nodecache_config.with_env(cfg, env)


