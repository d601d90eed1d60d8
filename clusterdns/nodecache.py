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
It does not watch the API (kubernetes/dns#594). The dummy interface and the NOTRACK
iptables rules of node-local-dns are left to the operator (README).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import time
from dataclasses import asdict
from typing import Any

from clusterdns.app import Listeners, StartupError, parse_listen, run
from clusterdns.nodecache_config import ConfigError, NodeCacheConfig, add_arguments, from_args
from clusterdns.obs.health import HealthServer
from clusterdns.server.handler import Handler
from clusterdns.server.table import AnswerTable
from clusterdns.server.tcp import TCPLimits
from clusterdns.zones.forward import Forwarder, LoopDetector, UpstreamSpec, parse_hostport
from clusterdns.zones.router import Router
from clusterdns.zones.upstreams import (
    Forwarding,
    ForwardTable,
    ForwardZone,
    load_kube_dns_configmap,
    resolv_conf_upstreams,
)

log = logging.getLogger("clusterdns")


def _cache_opts(cfg: NodeCacheConfig, max_ttl: int, max_negative_ttl: int) -> dict[str, Any]:
    c = cfg.cache
    return dict(max_entries=c.max_entries, max_ttl=max_ttl, min_ttl=c.min_ttl,
                max_negative_ttl=max_negative_ttl, min_negative_ttl=c.min_ttl,
                servfail_ttl=c.servfail_ttl, prefetch=c.prefetch,
                prefetch_percentage=c.prefetch_percentage, serve_stale=c.serve_stale,
                stale_ttl=c.stale_ttl, stale_answer_timeout=c.stale_answer_timeout,
                stale_recheck=c.stale_recheck)


def _upstreams(cfg: NodeCacheConfig) -> tuple[list[UpstreamSpec], dict[str, list[UpstreamSpec]]]:
    """'.' servers and stub domains: flags/config over the ConfigMap over resolv.conf."""
    stubs: dict[str, list[UpstreamSpec]] = {}
    default: list[UpstreamSpec] = []
    if cfg.kube_dns_configmap:
        cm = load_kube_dns_configmap(cfg.kube_dns_configmap)
        stubs.update(cm.stub_domains)
        default = cm.upstream_nameservers
    for zone, servers in cfg.stub_domains.items():
        stubs[zone.rstrip(".").lower() + "."] = [parse_hostport(s) for s in servers]
    if cfg.upstreams:
        default = [parse_hostport(s) for s in cfg.upstreams]
    if not default:
        try:
            default = resolv_conf_upstreams(cfg.resolv_conf)
        except OSError as exc:
            raise ConfigError(f"cannot read {cfg.resolv_conf}: {exc.strerror or exc}") from None
        if not default:
            raise ConfigError(f"{cfg.resolv_conf} lists no nameserver; pass --upstream")
    return default, stubs


def build(cfg: NodeCacheConfig, loop: LoopDetector | None = None) -> Forwarding:
    """The forward table of the node cache, from its settings."""
    if not cfg.cluster_dns:
        raise ConfigError("--cluster-dns HOST[:PORT] is required: the kube-dns-upstream Service "
                          "(or set KUBE_DNS_UPSTREAM_SERVICE_HOST)")
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
    table.add(ForwardZone(zone, to_cluster,
                          _cache_opts(cfg, c.cluster_success_ttl, c.cluster_denial_ttl), loop))
    for rz in cfg.reverse_zones:
        table.add(ForwardZone(rz, to_cluster, _cache_opts(cfg, c.success_ttl, c.denial_ttl), loop))
    other = _cache_opts(cfg, c.success_ttl, c.denial_ttl)
    for stub, servers in stubs.items():
        table.add(ForwardZone(stub, Forwarder(servers, name=stub, except_zones=[zone], **fo),
                              other, loop))
    table.add(ForwardZone(".", Forwarder(default, name=".", except_zones=[zone], **fo), other, loop))
    return Forwarding(table, local_zones=(), fallthrough=(), max_udp=cfg.max_udp, loop=loop)


async def serve(cfg: NodeCacheConfig) -> int:
    """Run the node cache until SIGTERM/SIGINT; 1 when a forwarding loop is found."""
    started = time.monotonic()
    forwarding = build(cfg, LoopDetector() if cfg.loop_detect else None)
    handler = Handler(Router(None), AnswerTable(4096), cfg.max_udp, forwarding=forwarding)
    listeners = Listeners(handler, TCPLimits(cfg.tcp_idle_timeout, cfg.max_tcp_connections))
    health = HealthServer(cfg.health, cfg.health) if cfg.health else None
    try:
        await listeners.start([parse_listen(s) for s in cfg.listen])
        if health is not None:
            try:
                await health.start()
            except OSError as exc:
                raise StartupError(f"cannot serve /health on {cfg.health}: {exc.strerror or exc}") from None
        log.info("serving node-cache on %s (udp+tcp): %s; health on port %s; ready in %.2fs",
                 ", ".join(f"{h}:{p}" for h, p in listeners.bound),
                 "; ".join(f"{z.zone} -> {', '.join(str(u.spec) for u in z.forwarder.upstreams)}"
                           for z in forwarding.table.zones),
                 health.health_port if health else "-", time.monotonic() - started)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        forwarding.start(stop.set, listeners.bound)
        await stop.wait()
        if forwarding.looped:
            return 1  # the cause was logged plainly
        log.info("shutting down")
        return 0
    finally:
        listeners.close()
        if health is not None:
            await health.stop()
        forwarding.close()


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Register `node-cache` on the CLI's subcommands."""
    p = sub.add_parser("node-cache", help="run as the node-local DNS cache (NodeLocal DNSCache role)",
                       description=__doc__.split("\n")[0])
    add_arguments(p)
    return p


def main_args(args: argparse.Namespace) -> int:
    """Run `clusterdns node-cache` with parsed flags; the exit code."""
    try:
        cfg = from_args(args)
    except ConfigError as exc:
        logging.basicConfig(level="INFO", stream=sys.stderr)
        log.error("%s", exc)
        return 2
    logging.basicConfig(level=cfg.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return run(serve(cfg))
    except (ConfigError, StartupError) as exc:
        log.error("%s", exc)
        return 1 if isinstance(exc, StartupError) else 2
    except KeyboardInterrupt:
        return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="clusterdns node-cache")
    add_arguments(parser)
    return main_args(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
