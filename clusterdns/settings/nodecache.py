"""Settings of `clusterdns node-cache`: dataclasses and the flags (files: clusterdns.settings.config).

Defaults follow node-local-dns (operators.md 1.7) unless a field says otherwise.
Precedence: built-in defaults < the YAML file (--config) < command-line flags.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field


@dataclass
class CacheSettings:
    max_entries: int = 9984
    """Entries per zone cache (CoreDNS's default capacity); LRU beyond that."""
    max_denial_entries: int = 9984
    """NXDOMAIN/NODATA/SERVFAIL entries per zone cache, kept apart (CoreDNS `denial
    CAPACITY`): a flood of unknown names evicts denials only, never positive answers."""
    cluster_success_ttl: int = 30
    """Cap on positive TTLs for the cluster zone (node-local-dns `success 9984 30`)."""
    cluster_denial_ttl: int = 5
    """Cap on NXDOMAIN/NODATA TTLs for the cluster zone (`denial 9984 5`, kubernetes#74093):
    a Service created just after a miss resolves within 5 s."""
    success_ttl: int = 30
    """Cap on positive TTLs for every other zone (node-local-dns `cache 30`)."""
    denial_ttl: int = 30
    """Cap on negative TTLs for every other zone (`cache 30` caps both)."""
    min_ttl: int = 5
    """Floor on cached TTLs (CoreDNS `cache` MINTTL)."""
    servfail_ttl: int = 5
    """Upstream SERVFAIL kept this long (CoreDNS `servfail 5s`)."""
    serve_stale: float = 3600.0
    """Seconds past expiry an answer may still be served when upstreams fail (RFC 8767);
    0 turns it off. On by default: node-local-dns has no serve-stale, so a short cluster
    DNS outage fails every pod's lookups (kubernetes#113080)."""
    stale_ttl: int = 30
    """TTL on stale answers (RFC 8767 4 recommends 30 s)."""
    stale_answer_timeout: float = 1.8
    """Wait this long for the upstream before a stale answer goes out (RFC 8767 5)."""
    stale_recheck: float = 5.0
    """After a failed refresh, serve stale without asking upstream for this long."""
    prefetch: int = 0
    """Refresh an entry hit this many times before it expires; 0 = off (CoreDNS default)."""
    prefetch_percentage: int = 10
    """Prefetch when less than this share of the TTL is left (CoreDNS default 10%)."""


@dataclass
class ForwardSettings:
    policy: str = "random"
    """random, round_robin or sequential (CoreDNS forward `policy`)."""
    max_fails: int = 2
    """Consecutive failures before an upstream is marked down and health-probed."""
    health_interval: float = 0.5
    """Seconds between `. IN NS` probes of a down upstream."""
    read_timeout: float = 2.0
    """Per-upstream wait before trying the next one."""
    timeout: float = 5.0
    """Whole-question budget across upstreams."""
    expire: float = 10.0
    """Pooled TCP connections idle longer than this are closed."""
    max_concurrent: int = 1000
    """Questions in flight per forwarder beyond which new ones get REFUSED (kubeadm)."""


@dataclass
class RRLSettings:
    """Response-rate limiting of UDP answers per client prefix (server/rrl.py), both modes."""

    responses_per_second: float = 0.0
    """UDP answers per second to one client prefix before RRL drops or slips them (CoreDNS rrl
    `responses-per-second`); 0 = off. TCP is never limited."""
    window: float = 15.0
    """Seconds of debt a limited prefix can build (CoreDNS rrl `window`): a flood that stops is
    answered again within this long."""
    slip: int = 2
    """Every Nth limited answer goes out empty with TC=1 so real clients retry over TCP; 0 drops
    all, 1 truncates all (CoreDNS rrl `slip-ratio`)."""
    ipv4_prefix_length: int = 24
    """IPv4 clients in one /N share a budget (CoreDNS rrl `ipv4-prefix-length`)."""
    ipv6_prefix_length: int = 56
    """IPv6 clients in one /N share a budget (CoreDNS rrl `ipv6-prefix-length`)."""
    max_table_size: int = 100000
    """Prefixes tracked at most, least recently seen evicted (CoreDNS rrl `max-table-size`), so
    spoofed sources cannot grow memory."""


@dataclass
class NodeCacheConfig:
    listen: list[str] = field(default_factory=lambda: ["169.254.20.10:53"])
    """UDP+TCP addresses; add the kube-dns ClusterIP in iptables mode (then kubelet's
    clusterDNS need not change)."""
    health: str = "169.254.20.10:8080"
    """/health and /ready listener (node-local-dns: <localip>:8080); HOST:PORT or ${POD_IP}:PORT."""
    cluster_domain: str = "cluster.local"
    cluster_dns: str | None = None
    """The kube-dns-upstream Service (HOST[:PORT]); default from the Service's env vars
    KUBE_DNS_UPSTREAM_SERVICE_HOST/_PORT, as node-cache's -upstreamsvc does."""
    cluster_force_tcp: bool = True
    """TCP to the cluster DNS (node-local-dns `force_tcp`: no conntrack UDP races)."""
    reverse_zones: list[str] = field(default_factory=lambda: ["in-addr.arpa", "ip6.arpa"])
    """Also sent to the cluster DNS, which falls through to its own upstreams."""
    upstreams: list[str] = field(default_factory=list)
    """Servers for every other name; empty = the nameservers of `resolv_conf`."""
    resolv_conf: str = "/etc/resolv.conf"
    stub_domains: dict[str, list[str]] = field(default_factory=dict)
    """Zone -> servers, e.g. {"consul.local": ["10.150.0.1"]}."""
    kube_dns_configmap: str | None = None
    """The kube-dns ConfigMap as a mounted directory or a YAML/JSON file (stubDomains,
    upstreamNameservers); node-cache's -kubednscm."""
    loop_detect: bool = True
    """Probe for a forwarding loop at start and exit non-zero if one is found."""
    max_udp: int = 1232
    tcp_idle_timeout: float = 10.0
    max_tcp_connections: int = 1024
    log_level: str = "info"
    cache: CacheSettings = field(default_factory=CacheSettings)
    forward: ForwardSettings = field(default_factory=ForwardSettings)
    rrl: RRLSettings = field(default_factory=RRLSettings)


class ConfigError(ValueError):
    """A config file or flag that cannot be used, with a message that says why."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The node-cache flags (all optional: the config file and defaults fill the rest)."""
    p.add_argument("--config", metavar="FILE", help="YAML settings (config/node-cache.yaml)")
    p.add_argument("--listen", action="append", metavar="HOST:PORT",
                   help="UDP+TCP address, repeatable (default 169.254.20.10:53)")
    p.add_argument("--health", metavar="HOST:PORT", help="/health and /ready; HOST:PORT, [v6]:PORT or ${POD_IP}:PORT "
                        "(default 169.254.20.10:8080)")
    p.add_argument("--cluster-domain", metavar="ZONE")
    p.add_argument("--cluster-dns", metavar="HOST[:PORT]",
                   help="the kube-dns-upstream Service, for the cluster and reverse zones")
    p.add_argument("--cluster-udp", action="store_true",
                   help="ask the cluster DNS over UDP first instead of TCP only")
    p.add_argument("--upstream", action="append", metavar="HOST[:PORT]",
                   help="server for other names, repeatable; [::1]:53 for IPv6 (default: --resolv-conf)")
    p.add_argument("--resolv-conf", metavar="PATH", help="nameservers for other names (default /etc/resolv.conf)")
    p.add_argument("--stub", action="append", metavar="ZONE=IP[:PORT][,IP...]", help="stub domain, repeatable")
    p.add_argument("--kube-dns-configmap", metavar="PATH",
                   help="kube-dns ConfigMap (stubDomains, upstreamNameservers): mounted dir or YAML/JSON file")
    p.add_argument("--serve-stale", type=float, metavar="SECONDS", help="0 turns serve-stale off (default 3600)")
    p.add_argument("--prefetch", type=int, metavar="N", help="refresh entries asked N times before expiry")
    p.add_argument("--cache-denial-entries", type=int, metavar="N",
                   help="NXDOMAIN/NODATA/SERVFAIL entries per zone cache, apart from positive ones (default 9984)")
    p.add_argument("--max-concurrent", type=int, metavar="N", help="in-flight upstream questions per forwarder")
    p.add_argument("--policy", choices=["random", "round_robin", "sequential"])
    p.add_argument("--no-loop-detect", action="store_true", help="skip the start-up forwarding-loop probe")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    add_rrl_arguments(p)


def add_rrl_arguments(p: argparse.ArgumentParser) -> None:
    """Response-rate limiting flags, the same for both modes (defaults: RRLSettings)."""
    g = p.add_argument_group("response-rate limiting of UDP answers (off unless --rrl-responses-per-second)")
    g.add_argument("--rrl-responses-per-second", type=float, metavar="N",
                   help="UDP answers per second to one client prefix, then drop or slip (default 0: off)")
    g.add_argument("--rrl-window", type=float, metavar="SECONDS",
                   help="seconds of debt a limited prefix can build (default 15)")
    g.add_argument("--rrl-slip", type=int, metavar="N",
                   help="every Nth limited answer goes out empty with TC=1; 0 drops all, 1 truncates all (default 2)")
    g.add_argument("--rrl-ipv4-prefix-length", type=int, metavar="BITS", help="IPv4 prefix of one budget (default 24)")
    g.add_argument("--rrl-ipv6-prefix-length", type=int, metavar="BITS", help="IPv6 prefix of one budget (default 56)")
    g.add_argument("--rrl-max-table-size", type=int, metavar="N",
                   help="client prefixes tracked at most, LRU beyond (default 100000)")


def with_env(cfg: NodeCacheConfig, environ: dict[str, str] | os._Environ[str] | None = None) -> NodeCacheConfig:
    """cluster_dns from the kube-dns-upstream Service's env vars when nothing set it."""
    env = os.environ if environ is None else environ
    host = env.get("KUBE_DNS_UPSTREAM_SERVICE_HOST")
    if cfg.cluster_dns is None and host:
        host = f"[{host}]" if ":" in host else host
        cfg.cluster_dns = f"{host}:{env.get('KUBE_DNS_UPSTREAM_SERVICE_PORT', '53')}"
    return cfg
