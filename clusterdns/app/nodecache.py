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
(lifecycle.py); a reload rebuilds the forward table and its caches.
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
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from clusterdns.app import lifecycle
from clusterdns.app.cluster import run
from clusterdns.app.lifecycle import StartupError
from clusterdns.server.listeners import Listeners
from clusterdns.settings.config import cache_opts, rrl_opts
from clusterdns.settings.config import from_args
from clusterdns.settings.nodecache import ConfigError, NodeCacheConfig, add_arguments
from clusterdns.obs import logs
from clusterdns.obs.sources import Sources
from clusterdns.app.reload import Reloader
from clusterdns.server.handler import Handler
from clusterdns.server.rrl import limiter
from clusterdns.server.tcp import TCPLimits
from clusterdns.forward.forwarder import Forwarder
from clusterdns.forward.forwarding import Forwarding
from clusterdns.forward.loop import LoopDetector
from clusterdns.forward.sources import choose_upstreams, load_kube_dns_configmap
from clusterdns.forward.table import ForwardTable, ForwardZone
from clusterdns.forward.upstream import UpstreamSpec, parse_hostport

log = logging.getLogger("clusterdns")


def _cache_opts(cfg: NodeCacheConfig, max_ttl: int, max_negative_ttl: int) -> dict[str, Any]:
    return cache_opts(cfg.cache, max_ttl, max_negative_ttl)


def _upstreams(cfg: NodeCacheConfig) -> tuple[list[UpstreamSpec], dict[str, list[UpstreamSpec]]]:
    """'.' servers and stub domains: flags/config over the ConfigMap over resolv.conf
    (sources.choose_upstreams); resolv.conf is always the last resort here."""
    cm = load_kube_dns_configmap(cfg.kube_dns_configmap) if cfg.kube_dns_configmap else None
    stubs = {zone.rstrip(".").lower() + ".": [parse_hostport(s) for s in servers]
             for zone, servers in cfg.stub_domains.items()}
    ups = [parse_hostport(s) for s in cfg.upstreams]
    try:
        return choose_upstreams(ups, stubs, cm, cfg.resolv_conf)
    except OSError as exc:  # only the resolv.conf read can raise it
        raise ConfigError(f"cannot read {cfg.resolv_conf}: {exc.strerror or exc}") from None


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


async def serve(cfg: NodeCacheConfig, load: Callable[[], NodeCacheConfig] | None = None,
                path: str | None = None) -> int:
    """Run the node cache until SIGTERM/SIGINT; 1 when a forwarding loop is found.

    `load` re-reads the config file and the flags for a reload (SIGHUP, `watch_config`).
    """
    started = time.monotonic()
    forwarding = build(cfg, LoopDetector() if cfg.loop_detect else None)
    handler = Handler(None, cfg.max_udp, forwarding=forwarding)  # hits: `Handler.cached`
    query_log = lifecycle.query_log(getattr(cfg, "query_log", False), getattr(cfg, "query_log_sample", 1))
    listeners = Listeners(handler, TCPLimits(cfg.tcp_idle_timeout, cfg.max_tcp_connections), query_log,
                          limiter(rrl_opts(cfg.rrl)))
    health = None
    if cfg.health:
        from clusterdns.obs.health import HealthServer  # only with --health

        address = lifecycle.bind_address(cfg.health, "/health and /ready", "--health (config `health:`)")
        health = HealthServer(address, address)
    sources = Sources(handler=handler, forwarding=forwarding, tcp_limits=listeners.limits,
                      plugins=lifecycle.plugins(forward=True, cache=True, errors=True, loop=cfg.loop_detect,
                                                health=bool(cfg.health), log=query_log is not None,
                                                prometheus=bool(getattr(cfg, "metrics", None)),
                                                reload=path is not None, rrl=listeners.rrl is not None),
                      rrl=listeners.rrl)
    metrics = None
    reloader: Reloader | None = None
    try:
        await lifecycle.listen(listeners, cfg.listen)
        if health is not None:
            try:
                await health.start()
            except OSError as exc:
                raise StartupError(f"cannot serve /health on {cfg.health}: {exc.strerror or exc}") from None
        metrics = await lifecycle.start_metrics(getattr(cfg, "metrics", None), sources)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        running = _Running(cfg, load, path, handler, listeners, sources, stop)
        reloader = Reloader(running.reload, path, getattr(cfg, "watch_config", False))
        reloader.start()  # signal handlers before "serving": a supervisor may signal at once
        log.info("serving node-cache on %s (udp+tcp): %s; health on port %s; ready in %.2fs",
                 ", ".join(f"{h}:{p}" for h, p in listeners.bound),
                 "; ".join(f"{z.zone} -> {', '.join(str(u.spec) for u in z.forwarder.upstreams)}"
                           for z in forwarding.table.zones),
                 health.health_port if health else "-", time.monotonic() - started)
        forwarding.start(stop.set, listeners.bound)
        flusher = asyncio.create_task(lifecycle.flush_logs(), name="log-flush")
        try:
            await stop.wait()
            await reloader.stop()
            if handler.forwarding is not None and handler.forwarding.looped:
                return 1  # the cause was logged plainly
            await lifecycle.lame_duck(stop, getattr(running.cfg, "lameduck", 0.0), health)
            await lifecycle.drain(listeners, getattr(running.cfg, "shutdown_timeout", 5.0))
        finally:
            flusher.cancel()
        log.info("stopped")
        return 0
    finally:
        listeners.close()
        if reloader is not None:
            await reloader.stop()
        if health is not None:
            await health.stop()
        if metrics is not None:
            await metrics.stop()
        if handler.forwarding is not None:
            handler.forwarding.close()
        logs.flush(final=True)


class _Running:
    """What a reload replaces: the forward table (with its caches), limits, logging."""

    def __init__(self, cfg: NodeCacheConfig, load: Callable[[], NodeCacheConfig] | None, path: str | None,
                 handler: Handler, listeners: Listeners, sources: Sources, stop: asyncio.Event) -> None:
        self.cfg, self.load, self.path = cfg, load, path
        self.handler, self.listeners, self.sources, self.stop = handler, listeners, sources, stop

    async def reload(self, why: str) -> None:
        if self.load is None:
            return
        from clusterdns.settings import config  # imports nodecache_config, which this module's importers need first

        old = self.cfg
        try:
            fresh = self.load()
            new = config.with_restart_keys(old, fresh)  # type: ignore[arg-type]
            forwarding = build(new, LoopDetector() if new.loop_detect else None)
        except (ConfigError, ValueError) as exc:
            self.sources.reloads.failed += 1
            for problem in getattr(exc, "problems", None) or [str(exc)]:
                log.error("%s", problem)
            log.error("config %s rejected (%s); keeping the running config", self.path, why)
            return
        applied, _ = config.split_reload(old, new)  # type: ignore[arg-type]
        _, waiting = config.split_reload(old, fresh)  # type: ignore[arg-type]
        self.cfg = new
        h = self.handler
        old_forwarding, h.forwarding = h.forwarding, forwarding
        h.max_udp = new.max_udp
        self.sources.forwarding = forwarding
        self.listeners.limits.idle_timeout = new.tcp_idle_timeout
        self.listeners.limits.max_connections = new.max_tcp_connections
        self.listeners.set_rrl(limiter(rrl_opts(new.rrl), self.listeners.rrl))
        self.sources.rrl = self.listeners.rrl
        if (old.query_log, old.query_log_sample) != (new.query_log, new.query_log_sample):  # type: ignore[attr-defined]
            self.listeners.set_query_log(lifecycle.query_log(new.query_log, new.query_log_sample))  # type: ignore[attr-defined]
        logs.setup(new.log_level, new.log_format, new.error_consolidate)  # type: ignore[attr-defined]
        forwarding.start(self.stop.set, self.listeners.bound)
        if old_forwarding is not None:  # once its questions in flight had time to finish
            asyncio.get_running_loop().call_later(old.forward.timeout + 1.0, old_forwarding.close)
        self.sources.reloads.succeeded += 1
        self.sources.reloads.last_success = time.time()
        log.info("config reloaded from %s (%s): %s", self.path, why, ", ".join(applied) or "no changes")
        if waiting:
            log.warning("config %s changes %s: takes effect on restart", self.path, ", ".join(waiting))


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Register `node-cache` on the CLI's subcommands."""
    p = sub.add_parser("node-cache", help="run as the node-local DNS cache (NodeLocal DNSCache role)",
                       description=__doc__.split("\n")[0])
    add_arguments(p)
    return p


def main_config(cfg: NodeCacheConfig, load: Callable[[], NodeCacheConfig] | None, path: str | None) -> int:
    """Run `clusterdns node-cache` from a validated config (the CLI's path); the exit code."""
    try:
        return run(serve(cfg, load, path))
    except (ConfigError, StartupError) as exc:
        log.error("%s", exc)
        return 1 if isinstance(exc, StartupError) else 2
    except KeyboardInterrupt:
        return 0


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
