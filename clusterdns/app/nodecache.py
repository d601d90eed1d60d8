"""`clusterdns node-cache`: the NodeLocal DNSCache role, a caching forwarder on each node.

Zones (node-local-dns's Corefile, operators.md 1.7):

* the cluster zone -> the cluster DNS (`--cluster-dns`, the kube-dns-upstream Service),
  TCP only by default, cached success 30 s / denial 5 s;
* in-addr.arpa and ip6.arpa -> the cluster DNS too (it falls through to its upstreams),
  cached 30 s;
* stub domains (flags, config, kube-dns ConfigMap) -> their servers, cached 30 s;
* everything else -> `--upstream`, the ConfigMap's upstreamNameservers, or the node's
  resolv.conf, cached 30 s; the cluster zone is never sent there.

Serve-stale is on (node-local-dns has none: a short cluster DNS outage fails every pod).
Metrics, the query log, reloads and the stop on SIGTERM are the same as `serve`'s
(server.py runs both); a reload rebuilds the forward table and its caches.
It does not watch the API (kubernetes/dns#594). The dummy interface and the NOTRACK
iptables rules of node-local-dns are left to the operator (README).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, fields
from typing import Any

from clusterdns.app import lifecycle
from clusterdns.app.lifecycle import StartupError
from clusterdns.app.server import Rebuilt, Server, Stack, run
from clusterdns.cache.settings import cache_kwargs as cache_opts
from clusterdns.forward.forwarder import Forwarder
from clusterdns.forward.forwarding import Forwarding
from clusterdns.forward.loop import LoopDetector
from clusterdns.forward.sources import choose_upstreams, load_kube_dns_configmap
from clusterdns.forward.table import ForwardTable, ForwardZone
from clusterdns.forward.upstream import UpstreamSpec, parse_hostport
from clusterdns.obs.sources import Sources
from clusterdns.options.declare import ConfigError
from clusterdns.server.handler import Handler
from clusterdns.server.listeners import Listeners
from clusterdns.server.rrl import limiter
from clusterdns.server.settings import rrl_kwargs
from clusterdns.server.tcp import TCPLimits
from clusterdns.settings.config import RESTART_ONLY
from clusterdns.settings.schema import NodeCacheConfig

log = logging.getLogger("clusterdns")


def _cache_opts(cfg: NodeCacheConfig, max_ttl: int, max_negative_ttl: int) -> dict[str, Any]:
    return cache_opts(cfg.cache, max_ttl, max_negative_ttl)


def _upstreams(cfg: NodeCacheConfig) -> tuple[list[UpstreamSpec], dict[str, list[UpstreamSpec]]]:
    """'.' servers and stub domains: flags/config over the ConfigMap over resolv.conf
    (sources.choose_upstreams); resolv.conf is always the last resort here."""
    cm = load_kube_dns_configmap(cfg.kube_dns_configmap) if cfg.kube_dns_configmap else None
    stubs = {
        zone.rstrip(".").lower() + ".": [parse_hostport(s) for s in servers]
        for zone, servers in cfg.stub_domains.items()
    }
    ups = [parse_hostport(s) for s in cfg.upstreams]
    try:
        return choose_upstreams(ups, stubs, cm, cfg.resolv_conf)
    except OSError as exc:  # only the resolv.conf read can raise it
        raise ConfigError(f"cannot read {cfg.resolv_conf}: {exc.strerror or exc}") from None


def build(cfg: NodeCacheConfig, loop: LoopDetector | None = None) -> Forwarding:
    """The forward table of the node cache, from its settings."""
    if not cfg.cluster_dns:
        raise ConfigError(
            "--cluster-dns HOST[:PORT] is required: the kube-dns-upstream Service "
            "(or set KUBE_DNS_UPSTREAM_SERVICE_HOST)"
        )
    fo = asdict(cfg.forward)
    zone = cfg.cluster_domain.strip(".").lower()
    try:
        cluster = parse_hostport(cfg.cluster_dns, force_tcp=cfg.cluster_force_tcp)
        default, stubs = _upstreams(cfg)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    c = cfg.cache
    to_cluster = Forwarder([cluster], name=zone, **fo)
    table = ForwardTable()
    table.add(ForwardZone(zone, to_cluster, _cache_opts(cfg, c.cluster_success_ttl, c.cluster_denial_ttl), loop))
    for rz in cfg.reverse_zones:
        table.add(ForwardZone(rz, to_cluster, _cache_opts(cfg, c.success_ttl, c.denial_ttl), loop))
    other = _cache_opts(cfg, c.success_ttl, c.denial_ttl)
    for stub, servers in stubs.items():
        table.add(ForwardZone(stub, Forwarder(servers, name=stub, except_zones=[zone], **fo), other, loop))
    table.add(ForwardZone(".", Forwarder(default, name=".", except_zones=[zone], **fo), other, loop))
    return Forwarding(table, local_zones=(), fallthrough=(), max_udp=cfg.max_udp, loop=loop)


class NodeCacheStack(Stack):
    """`clusterdns node-cache`: the forward table with its caches, the listeners, /health
    (and /ready, the same address) when set, /metrics when set; no zone, no source."""

    def __init__(
        self, cfg: NodeCacheConfig, load: Callable[[], NodeCacheConfig] | None = None, path: str | None = None
    ) -> None:
        forwarding = build(cfg, LoopDetector() if cfg.loop_detect else None)
        handler = Handler(None, cfg.max_udp, forwarding=forwarding)  # hits: `Handler.cached`
        query_log = lifecycle.query_log(cfg.query_log, cfg.query_log_sample)
        listeners = Listeners(
            handler, TCPLimits(cfg.tcp_idle_timeout, cfg.max_tcp_connections), query_log, limiter(rrl_kwargs(cfg.rrl))
        )
        plugins = lifecycle.plugins(
            forward=True,
            cache=True,
            errors=True,
            loop=cfg.loop_detect,
            health=bool(cfg.health),
            log=query_log is not None,
            prometheus=bool(cfg.metrics),
            reload=path is not None,
            rrl=listeners.rrl is not None,
        )
        sources = Sources(
            handler=handler, forwarding=forwarding, tcp_limits=listeners.limits, plugins=plugins, rrl=listeners.rrl
        )
        super().__init__(cfg, handler, listeners, sources, load=load, config=path, watch_config=cfg.watch_config)
        # the sockets (DNS, /health, /metrics) and the file watch: the keys the schema marks restart-only
        self.restart_only = RESTART_ONLY & {f.name for f in fields(cfg)}
        if cfg.health:
            from clusterdns.obs.health import HealthServer  # only with --health

            address = lifecycle.bind_address(cfg.health, "/health and /ready", "--health (config `health:`)")
            self.health = HealthServer(address, address)

    async def open(self, stop: Callable[[], None]) -> None:
        cfg = self.opts
        await lifecycle.listen(self.listeners, cfg.listen)
        if self.health is not None:
            try:
                await self.health.start()
            except OSError as exc:
                raise StartupError(f"cannot serve /health on {cfg.health}: {exc.strerror or exc}") from None
        self.metrics = await lifecycle.start_metrics(cfg.metrics, self.sources)

    def ready_line(self, seconds: float) -> tuple[Any, ...]:
        forwarding = self.handler.forwarding
        zones = "; ".join(
            f"{z.zone} -> {', '.join(str(u.spec) for u in z.forwarder.upstreams)}"
            for z in (forwarding.table.zones if forwarding is not None else ())
        )
        return (
            "serving node-cache on %s (udp+tcp): %s; health on port %s; ready in %.2fs",
            ", ".join(f"{h}:{p}" for h, p in self.listeners.bound),
            zones,
            self.health.health_port if self.health else "-",
            seconds,
        )

    def rebuild(self, cfg: NodeCacheConfig) -> Rebuilt:
        """The forward table anew: new upstreams and stubs, caches of the new sizes."""
        return Rebuilt(build(cfg, LoopDetector() if cfg.loop_detect else None))


async def serve(
    cfg: NodeCacheConfig, load: Callable[[], NodeCacheConfig] | None = None, path: str | None = None
) -> int:
    """Run the node cache until SIGTERM/SIGINT; 1 when a forwarding loop is found.

    `load` re-reads the config file and the flags for a reload (SIGHUP, `watch_config`).
    """
    return await Server(lambda: NodeCacheStack(cfg, load, path)).run()


def main_config(cfg: NodeCacheConfig, load: Callable[[], NodeCacheConfig] | None, path: str | None) -> int:
    """Run `clusterdns node-cache` from a validated config (the CLI's path); the exit code."""
    try:
        return run(serve(cfg, load, path))
    except (ConfigError, StartupError) as exc:
        log.error("%s", exc)
        return 1 if isinstance(exc, StartupError) else 2
    except KeyboardInterrupt:
        return 0
