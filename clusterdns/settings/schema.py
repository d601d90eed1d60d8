"""The settings of both modes, each option declared once (options/declare.py says what that
declaration feeds: YAML loading, flags, check-config, reload, docs/options.md).

Sections are declared by the component they configure and composed here: `cache` in
cache/settings.py (the response cache of forwarded names), `forward` in forward/settings.py
(the forwarder), `rrl` in server/settings.py (the UDP response-rate limiter). The components
take those values as keyword arguments (`cache_kwargs`, `forward_kwargs`, `rrl_kwargs` beside
each section) and declare no defaults of their own. What only one mode has (the node cache's
cluster-zone caps, the answering, source, logging and lifecycle options) is declared here.

Defaults follow CoreDNS and kubeadm's Corefile for `serve`, node-local-dns for `node-cache`
(../docs/options.md gives each one's reason).
"""

from __future__ import annotations

from dataclasses import dataclass

from clusterdns.cache.settings import CacheSettings
from clusterdns.cluster.compile import PODS_MODES
from clusterdns.cluster.transfer import client_problem
from clusterdns.forward.settings import ForwardSettings
from clusterdns.options import checks as c
from clusterdns.options.declare import option, section
from clusterdns.server.settings import RRLSettings
from clusterdns.settings import checks as mode_checks

MODES = ("serve", "node-cache")
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
_SECONDS = " seconds"
_WEEK = 604800


# --------------------------------------------------------------------------- sections


@dataclass
class NodeCacheCacheSettings(CacheSettings):
    """The node cache's: the cluster zone has its own caps (node-local-dns's Corefile)."""

    cluster_success_ttl: int = option(
        30,
        "Cap on positive TTLs for the cluster zone (node-local-dns `success 9984 30`).",
        check=c.between(0, _WEEK, _SECONDS),
    )
    cluster_denial_ttl: int = option(
        5,
        "Cap on NXDOMAIN/NODATA TTLs for the cluster zone (`denial 9984 5`, "
        "kubernetes#74093): a Service created just after a miss resolves within 5 s.",
        check=c.between(0, _WEEK, _SECONDS),
    )


# --------------------------------------------------------------------------- the modes


@dataclass
class CommonSettings:
    """Answering limits, logging and lifecycle: the same keys in both modes."""

    max_udp: int = option(
        1232,
        "Largest UDP answer for EDNS clients (DNS flag day 2020: no IP fragmentation).",
        check=c.between(512, 65535, " bytes"),
        flag="--max-udp-size",
        metavar="BYTES",
    )
    tcp_idle_timeout: float = option(
        10.0,
        "Close a TCP connection idle this long (RFC 7766 6.2.3 lets servers reclaim them).",
        check=c.above(0, _SECONDS),
        metavar="SECONDS",
    )
    max_tcp_connections: int = option(
        1024,
        "Open TCP connections at most; beyond it new ones are closed so memory stays bounded.",
        check=c.between(1),
        metavar="N",
    )
    log_level: str = option(
        "info",
        "debug, info, warning or error; info logs lifecycle and problems, never per query.",
        check=c.one_of(*LOG_LEVELS),
    )
    log_format: str = option(
        "text",
        "text (CoreDNS-like lines people grep) or json (one object per line for log shippers).",
        check=c.one_of(*LOG_FORMATS),
    )
    query_log: bool = option(False, "Log every answered query in CoreDNS's common format; off, as it costs throughput.")
    query_log_sample: int = option(
        1, "Log one query in N when the query log is on; raise it on busy servers.", check=c.between(1), metavar="N"
    )
    error_consolidate: float = option(
        10.0,
        "Repeated identical errors within this many seconds become one line "
        "with a count (CoreDNS `errors { consolidate }`), so a flood cannot fill the "
        "disk; 0 logs every one.",
        check=c.between(0, None, _SECONDS),
        metavar="SECONDS",
    )
    shutdown_timeout: float = option(
        5.0,
        "After the listeners close, wait at most this long for in-flight queries and TCP answers.",
        check=c.between(0, 600, _SECONDS),
        metavar="SECONDS",
    )
    watch_config: bool = option(
        False,
        "Re-read the config file when it changes (a ConfigMap mount updates by "
        "symlink swap); SIGHUP always re-reads it.",
        restart=True,
    )


@dataclass
class ServeConfig(CommonSettings):
    """`clusterdns serve`: the cluster DNS (the CoreDNS role)."""

    listen: list[str] = option(
        doc="UDP+TCP addresses, HOST:PORT or [v6]:PORT, repeatable; CoreDNS answers on :53 of every address.",
        factory=lambda: ["0.0.0.0:53"],
        check=c.listen_address,
        example="'0.0.0.0:53'",
        metavar="HOST:PORT",
        restart=True,
    )
    zone: str = option("cluster.local", "The cluster domain; must match kubelet's --cluster-domain.", check=c.domain)
    ttl: int = option(
        5,
        "TTL of cluster answers and of negative answers (CoreDNS default; kubeadm sets 30).",
        check=c.between(0, 3600, " seconds (CoreDNS's range)"),
    )
    pods: str = option(
        "insecure",
        "Pod records a-b-c-d.NS.pod.ZONE: disabled, insecure (kube-dns compatible, "
        "kubeadm) or verified (only existing pod IPs; watches every Pod, costly).",
        check=c.one_of(*PODS_MODES),
        restart=True,
    )
    endpoint_pod_names: bool = option(
        False, "Name hostname-less endpoints by their pod name instead of the dashed IP (CoreDNS option).", restart=True
    )
    ignore_empty_service: bool = option(
        False, "ClusterIP Services without ready endpoints answer NXDOMAIN (CoreDNS option)."
    )
    workers: int = option(
        1,
        "Processes answering on the same port (SO_REUSEPORT), one per core; one owns the source.",
        check=c.between(1, 256),
        metavar="N",
        restart=True,
    )
    manifests: list[str] = option(
        doc="Kubernetes YAML files or folders to serve instead of a live cluster (demos, tests); repeatable.",
        factory=list,
        metavar="PATH",
        restart=True,
    )
    kubeconfig: str | None = option(
        None,
        "kubeconfig path; null = the pod's service account, else $KUBECONFIG or ~/.kube/config.",
        metavar="PATH",
        restart=True,
    )
    context: str | None = option(None, "kubeconfig context; null = its current-context.", metavar="NAME", restart=True)
    namespaces: list[str] = option(
        doc="Only these namespaces exist (CoreDNS `namespaces`); empty = all.",
        factory=list,
        check=c.namespace,
        comma=True,
        metavar="NS[,NS...]",
        restart=True,
    )
    labels: str | None = option(
        None,
        "Label selector for Services and EndpointSlices (CoreDNS `labels`), for the "
        "API and manifests, e.g. 'app=web,tier!=test'.",
        check=mode_checks.label_selector,
        metavar="SELECTOR",
        restart=True,
    )
    sync_timeout: float = option(
        5.0,
        "Wait this long for the first API sync, then serve anyway, SERVFAIL for "
        "unknown names (CoreDNS `startup_timeout`).",
        check=c.between(0, None, _SECONDS),
        metavar="SECONDS",
        restart=True,
    )
    health: str | None = option(
        None,
        "/health address, HOST:PORT or ${POD_IP}:PORT (host from that env var); null "
        "= :8080 (every address, CoreDNS's) with the API, off with manifests.",
        check=mode_checks.http_address,
        example="':8080'",
        metavar="HOST:PORT",
        restart=True,
    )
    ready: str | None = option(
        None,
        "/ready address, HOST:PORT or ${POD_IP}:PORT; null = :8181 (every address, "
        "CoreDNS's) with the API, off with manifests.",
        check=mode_checks.http_address,
        example="':8181'",
        metavar="HOST:PORT",
        restart=True,
    )
    metrics: str | None = option(
        None,
        "/metrics address, HOST:PORT or ${POD_IP}:PORT; null = :9153 (every "
        "address; CoreDNS's port, dashboards expect it) with the API, off with manifests.",
        check=mode_checks.http_address,
        example="':9153'",
        metavar="HOST:PORT",
        restart=True,
    )
    lameduck: float = option(
        5.0,
        "After SIGTERM, fail /ready but keep answering this long so endpoints drain "
        "(kubeadm's `health { lameduck 5s }`).",
        check=c.between(0, 600, _SECONDS),
        metavar="SECONDS",
    )
    upstreams: list[str] = option(
        doc="Servers for names outside the cluster zone (HOST[:PORT], [v6]:PORT, "
        "tcp://HOST), repeatable; with none of upstreams/resolv_conf/stub_domains/"
        "kube_dns_configmap such names are REFUSED.",
        factory=list,
        check=c.upstream,
        example="'10.0.0.2:53'",
        flag="--upstream",
        metavar="HOST[:PORT]",
    )
    resolv_conf: str | None = option(
        None,
        "Forward to this resolv.conf's nameservers (kubeadm: `forward . "
        "/etc/resolv.conf`); the flag alone means /etc/resolv.conf.",
        const="/etc/resolv.conf",
        metavar="PATH",
    )
    stub_domains: dict[str, list[str]] = option(
        doc="Zone -> its own servers, e.g. {consul.local: [10.150.0.1]} "
        "(kube-dns stubDomains); the flag is ZONE=IP[:PORT][,IP...], "
        "repeatable.",
        factory=dict,
        keys=c.domain,
        check=c.upstream,
        flag="--stub",
        metavar="ZONE=IP[:PORT][,IP...]",
    )
    kube_dns_configmap: str | None = option(
        None, "A kube-dns ConfigMap (stubDomains, upstreamNameservers), mounted directory or YAML/JSON.", metavar="PATH"
    )
    loop_detect: bool = option(
        True, "Probe for a forwarding loop at start and exit non-zero with the cause (CoreDNS `loop`).", invert=True
    )
    transfer_to: list[str] = option(
        doc="Clients that may AXFR/IXFR the cluster and reverse zones over TCP (CoreDNS "
        "`transfer { to ... }`): addresses, CIDRs, or * for any; empty = every transfer REFUSED.",
        factory=list,
        check=client_problem,
        example="'10.0.0.0/8'",
        comma=True,
        metavar="ADDR[,ADDR...]",
    )
    max_transfers: int = option(
        10,
        "Zone transfers streamed at once; more are REFUSED until one ends (each holds a snapshot of the zone).",
        check=c.between(1, 1000),
        metavar="N",
    )
    external_zones: list[str] = option(
        doc="Zones that publish LoadBalancer ingress and externalIPs as SVC.NS.ZONE for clients "
        "outside the cluster (CoreDNS `k8s_external`), repeatable; ClusterIPs never appear there.",
        factory=list,
        check=c.domain,
        example="'example.com'",
        flag="--external-zone",
        metavar="ZONE",
    )
    external_apex: str = option(
        "dns",
        "Subdomain of each external zone holding its nameserver name, ns1.APEX.ZONE (CoreDNS `apex`).",
        check=c.domain,
        metavar="LABEL",
    )
    external_headless: bool = option(
        False,
        "Headless Services publish their ready endpoints in the external zones too (CoreDNS `headless`).",
    )
    external_ttl: int = option(
        5,
        "TTL of external-zone answers and their negative TTL (CoreDNS `k8s_external` default).",
        check=c.between(0, 3600, " seconds (CoreDNS's range)"),
        metavar="SECONDS",
    )
    refuse_tld_namespaces: bool = option(
        False,
        "NXDOMAIN for every name under NS.svc.ZONE when the namespace NS is a top-level domain of the "
        "public suffix list (CVE-2022-2837: namespace `com` would capture pods' `*.com` lookups); "
        "off, as the spec and CoreDNS answer them.",
    )
    cache: CacheSettings = section(
        CacheSettings,
        "Cache for forwarded names (the cluster zone is never cached: "
        "its answers come from the watch, kubeadm's `disable success/denial`).",
    )
    forward: ForwardSettings = section(ForwardSettings, "Upstream handling, shared with node-cache.")
    rrl: RRLSettings = section(
        RRLSettings, "Response-rate limiting of UDP answers, shared with node-cache; off by default."
    )


@dataclass
class NodeCacheConfig(CommonSettings):
    """`clusterdns node-cache`: the NodeLocal DNSCache role, a caching forwarder on each node."""

    listen: list[str] = option(
        doc="UDP+TCP addresses, repeatable; add the kube-dns ClusterIP in iptables mode "
        "(then kubelet's clusterDNS need not change).",
        factory=lambda: ["169.254.20.10:53"],
        check=c.listen_address,
        example="'169.254.20.10:53'",
        metavar="HOST:PORT",
        restart=True,
    )
    health: str = option(
        "169.254.20.10:8080",
        "/health and /ready listener (node-local-dns: <localip>:8080); HOST:PORT or ${POD_IP}:PORT; '' = off.",
        check=mode_checks.http_address,
        example="':8080'",
        metavar="HOST:PORT",
        restart=True,
    )
    metrics: str | None = option(
        None,
        "/metrics address, HOST:PORT or ${POD_IP}:PORT; null = off, so test and "
        "side-by-side caches do not fight over a port. Deployments set node-local-dns's "
        "`:9253` (config/node-cache.yaml does).",
        check=mode_checks.http_address,
        example="':9253'",
        metavar="HOST:PORT",
        restart=True,
    )
    lameduck: float = option(
        0.0,
        "0: pods reach the node cache by a link-local IP, not through Service endpoints, so there is nothing to drain.",
        check=c.between(0, 600, _SECONDS),
        metavar="SECONDS",
    )
    cluster_domain: str = option(
        "cluster.local",
        "The cluster domain; its names go to cluster_dns, never to upstreams.",
        check=c.domain,
        metavar="ZONE",
    )
    cluster_dns: str | None = option(
        None,
        "The kube-dns-upstream Service (HOST[:PORT]) for the cluster and "
        "reverse zones; default from the Service's env vars "
        "KUBE_DNS_UPSTREAM_SERVICE_HOST/_PORT, as node-cache's -upstreamsvc does.",
        check=c.upstream,
        example="'10.96.0.11:53'",
        metavar="HOST[:PORT]",
    )
    cluster_force_tcp: bool = option(
        True,
        "TCP to the cluster DNS (node-local-dns `force_tcp`: no conntrack UDP "
        "races); the flag --cluster-udp asks over UDP first.",
        flag="--cluster-udp",
        invert=True,
    )
    reverse_zones: list[str] = option(
        doc="Also sent to the cluster DNS, which falls through to its own upstreams.",
        factory=lambda: ["in-addr.arpa", "ip6.arpa"],
        check=c.domain,
        comma=True,
        metavar="ZONE[,ZONE...]",
    )
    upstreams: list[str] = option(
        doc="Servers for every other name, repeatable; empty = the nameservers of resolv_conf.",
        factory=list,
        check=c.upstream,
        example="'10.0.0.2:53'",
        flag="--upstream",
        metavar="HOST[:PORT]",
    )
    resolv_conf: str = option(
        "/etc/resolv.conf",
        "Nameservers for other names when upstreams and the ConfigMap give none (the node's, with dnsPolicy Default).",
        metavar="PATH",
    )
    stub_domains: dict[str, list[str]] = option(
        doc="Zone -> servers, e.g. {consul.local: [10.150.0.1]}; the flag is ZONE=IP[:PORT][,IP...], repeatable.",
        factory=dict,
        keys=c.domain,
        check=c.upstream,
        flag="--stub",
        metavar="ZONE=IP[:PORT][,IP...]",
    )
    kube_dns_configmap: str | None = option(
        None,
        "The kube-dns ConfigMap as a mounted directory or a YAML/JSON "
        "file (stubDomains, upstreamNameservers); node-cache's -kubednscm.",
        metavar="PATH",
    )
    loop_detect: bool = option(
        True, "Probe for a forwarding loop at start and exit non-zero if one is found.", invert=True
    )
    cache: NodeCacheCacheSettings = section(NodeCacheCacheSettings, "Caches of every forward zone.")
    forward: ForwardSettings = section(ForwardSettings, "Upstream handling, shared with serve.")
    rrl: RRLSettings = section(RRLSettings, "Response-rate limiting of UDP answers, shared with serve; off by default.")


SCHEMAS: dict[str, type] = {"serve": ServeConfig, "node-cache": NodeCacheConfig}
AnyConfig = ServeConfig | NodeCacheConfig
