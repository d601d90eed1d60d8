"""Composition root: builds the parts for a mode, starts them in order, stops them in order.

Data flows one way: source (manifests or the API watch) -> ClusterStore ->
ClusterZone -> Handler/AnswerTable -> UDP/TCP listeners. With the API watch, /health
and /ready are served too, and SIGTERM starts a lame-duck period (CoreDNS `health
{ lameduck }`): /ready fails while queries are still answered, then the listeners stop
taking queries, finish the answers in flight and close (lifecycle.py).

SIGHUP, or a changed config file with `watch_config`, reloads: the zone, the answer
table, forwarding, limits and logging are rebuilt from the new options while the store
(the watch cache) and the sockets stay.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

from clusterdns.app import lifecycle
from clusterdns.settings.config import RESTART_ONLY
from clusterdns.kube.manifests import bulk_load, load_manifests
from clusterdns.kube.store import ClusterStore
from clusterdns.app.lifecycle import StartupError
from clusterdns.obs import logs
from clusterdns.obs.sources import Sources
from clusterdns.app.reload import Reloader
from clusterdns.cluster.compile import ZoneSettings
from clusterdns.cluster.zone import ClusterZone
from clusterdns.server.handler import Handler
from clusterdns.server.listeners import Listeners, parse_listen
from clusterdns.server.rrl import limiter
from clusterdns.server.tcp import TCPLimits
from clusterdns.app.workers import Journal, Worker
from clusterdns.forward.forwarding import Forwarding, cluster_forwarding

if TYPE_CHECKING:  # imported where used: kubernetes and aiohttp cost ~0.4 s of start-up from manifests
    from clusterdns.kube.watch import KubeSource
    from clusterdns.obs.health import HealthServer

log = logging.getLogger("clusterdns")

# CORE-READY


@dataclass
class ServeOptions:
    """Everything `clusterdns serve` needs; built once by the CLI (uvicorn's Config habit)."""

    manifests: list[str] = field(default_factory=list)
    listen: list[str] = field(default_factory=lambda: ["0.0.0.0:53"])
    zone: str = "cluster.local"
    ttl: int = 5  # CoreDNS default; kubeadm sets 30
    pods: str = "insecure"  # kube-dns compatible, kubeadm's Corefile
    endpoint_pod_names: bool = False
    ignore_empty_service: bool = False
    max_udp: int = 1232  # DNS flag day 2020
    tcp_idle_timeout: float = 10.0
    max_tcp_connections: int = 1024
    workers: int = 1  # processes sharing the port (SO_REUSEPORT); one owns the source
    # the API source (used when there are no manifests)
    kubeconfig: str | None = None  # None: in-cluster, else $KUBECONFIG / ~/.kube/config
    context: str | None = None
    namespaces: tuple[str, ...] = ()  # CoreDNS `namespaces`: only these exist
    labels: str | None = None  # CoreDNS `labels`: selector for Services/EndpointSlices
    sync_timeout: float = 5.0  # CoreDNS `startup_timeout`
    # None: served only with the API source (:8080 / :8181, CoreDNS's ports)
    health: str | None = None
    ready: str | None = None
    lameduck: float = 5.0  # kubeadm's `health { lameduck 5s }`; applies when /ready is served
    # forwarding of names outside the zone (forward/forwarding.py); off unless one is given
    upstreams: list[str] = field(default_factory=list)
    resolv_conf: str | None = None  # `forward . /etc/resolv.conf`
    stubs: list[str] = field(default_factory=list)  # ZONE=IP[:PORT][,IP...]
    kube_dns_configmap: str | None = None  # stubDomains / upstreamNameservers
    loop_detect: bool = True  # CoreDNS `loop`: exit when the upstreams send our probe back
    cache_opts: dict[str, Any] | None = None  # ResponseCache options for forwarded names
    forward_opts: dict[str, Any] | None = None  # Forwarder options
    rrl_opts: dict[str, Any] | None = None  # server.rrl.RRL options; None: response-rate limiting off
    # operating it (config.py documents each): metrics, logs, reload, stop
    metrics: str | None = None  # None: :9153 with the API source (CoreDNS's port), off with manifests
    query_log: bool = False
    query_log_sample: int = 1
    log_level: str = "info"
    log_format: str = "text"
    error_consolidate: float = 10.0
    shutdown_timeout: float = 5.0
    config: str | None = None  # the file SIGHUP re-reads
    watch_config: bool = False
    reload: Callable[[], ServeOptions] | None = field(default=None, repr=False, compare=False)
    """Re-reads the config file and the flags given; raises config.ConfigError."""


def build_cluster(opts: ServeOptions) -> tuple[ClusterStore, Handler]:
    """Store, compiled zone and handler, wired so store changes recompile the zone."""
    store = ClusterStore(endpoint_pod_names=opts.endpoint_pod_names)
    zone = build_zone(opts, store)
    return store, Handler(zone, opts.max_udp, build_forwarding(opts, zone.zone))


def build_zone(opts: ServeOptions, store: ClusterStore) -> ClusterZone:
    own = tuple(h for h, _ in map(parse_listen, opts.listen) if h not in ("0.0.0.0", "::"))
    return ClusterZone(store, ZoneSettings(opts.zone, opts.ttl, opts.pods, opts.ignore_empty_service, own))


def build_forwarding(opts: ServeOptions, zone: str) -> Forwarding | None:
    try:
        return cluster_forwarding(
            zone, upstreams=opts.upstreams, resolv_conf=opts.resolv_conf, stubs=opts.stubs,
            kube_dns_configmap=opts.kube_dns_configmap, max_udp=opts.max_udp,
            loop_detect=opts.loop_detect, cache_opts=opts.cache_opts, forward_opts=opts.forward_opts)
    except (ValueError, OSError) as exc:
        raise StartupError(f"forwarding: {exc}") from None


def build_source(opts: ServeOptions, store: ClusterStore) -> KubeSource:
    """The API watch feeding `store`; a bad kubeconfig is a StartupError."""
    from clusterdns.kube.client import ApiConfigError, load_connection
    from clusterdns.kube.watch import KubeSource, WatchSettings

    try:
        conn = load_connection(opts.kubeconfig, opts.context)
    except ApiConfigError as exc:
        raise StartupError(f"{exc} (pass --kubeconfig PATH [--context NAME], or run in a pod)") from None
    settings = WatchSettings(namespaces=frozenset(opts.namespaces), labels=opts.labels,
                             pods=opts.pods == "verified")
    return KubeSource(store, conn, settings)


def _log_source_end(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("the Kubernetes API watch stopped; answers will not change any more",
                  exc_info=task.exception())


async def serve(opts: ServeOptions, journal: Journal | None = None, workers: list[Worker] = ()) -> int:  # type: ignore[assignment]
    """Run the cluster DNS server until SIGTERM/SIGINT; with `journal`, feed the workers,
    whose metrics /metrics adds in."""
    started = time.monotonic()
    store, handler = build_cluster(opts)
    if journal is not None:
        await journal.connect()
        store.follow(journal.send)
    source: KubeSource | None = None
    source_task: asyncio.Task | None = None
    health: HealthServer | None = None
    metrics = None
    skipped = 0
    if opts.manifests:
        with bulk_load():
            objects, skipped = load_manifests(opts.manifests, namespaces=opts.namespaces, labels=opts.labels,
                                              pod_names=opts.endpoint_pod_names)
            store.load(objects)
    else:
        source = build_source(opts, store)
    listeners = Listeners(handler, TCPLimits(opts.tcp_idle_timeout, opts.max_tcp_connections),
                          lifecycle.query_log(opts.query_log, opts.query_log_sample), limiter(opts.rrl_opts))
    sources = Sources(handler=handler, forwarding=handler.forwarding, kube=source,
                      store=store, tcp_limits=listeners.limits, plugins=_plugins(opts, source is not None),
                      rrl=listeners.rrl)
    try:
        if source is not None or opts.health or opts.ready:
            from clusterdns.obs.health import HealthServer

            health = HealthServer(
                lifecycle.bind_address(opts.health or ":8080", "/health", "--health (config `health:`)"),
                lifecycle.bind_address(opts.ready or ":8181", "/ready", "--ready (config `ready:`)"),
                source.missing if source is not None else None)
            try:
                await health.start()
            except OSError as exc:
                raise StartupError(f"cannot serve /health or /ready: {exc.strerror or exc} "
                                   "(pick other addresses with --health / --ready)") from None
        metrics = await lifecycle.start_metrics(opts.metrics or (":9153" if source is not None else None), sources)
        if metrics is not None and workers:
            metrics.collector.remote = await lifecycle.worker_families([w.metrics for w in workers])
        if source is not None:
            source.observers.append(lifecycle.programming_observer(store, sources))
            source_task = asyncio.create_task(source.run(), name="kube-source")
            source_task.add_done_callback(_log_source_end)
            await source.wait_synced(opts.sync_timeout)
        await lifecycle.listen(listeners, opts.listen, reuse_port=opts.workers > 1)
    except BaseException:
        await _shutdown(listeners, source_task, health, metrics)
        raise
    what = f"{len(store.services)} services, {len(store.slices)} endpoint slices"
    what += f", {skipped} skipped objects" if source is None else f" from the API ({'synced' if store.synced else 'not synced yet'})"
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    running = Running(opts, store, handler, listeners, sources, stop, [w.pid for w in workers])
    reloader = Reloader(running.reload, opts.config, opts.watch_config)
    reloader.start()  # signal handlers before "serving": a supervisor may signal at once
    log.info("serving %s on %s (udp+tcp): %s; ready in %.2fs",
             opts.zone, ", ".join(f"{h}:{p}" for h, p in listeners.bound), what, time.monotonic() - started)
    if handler.forwarding is not None:
        handler.forwarding.start(stop.set, listeners.bound)  # a forwarding loop sets `stop`
    flusher = asyncio.create_task(lifecycle.flush_logs(), name="log-flush")
    trimming = asyncio.create_task(trim_when_synced(store), name="trim")
    await stop.wait()
    trimming.cancel()
    await reloader.stop()
    forwarding = handler.forwarding
    if forwarding is not None and forwarding.looped:
        await _shutdown(listeners, source_task, health, metrics)
        forwarding.close()
        flusher.cancel()
        return 1  # the cause was logged plainly
    await lifecycle.lame_duck(stop, running.opts.lameduck, health)
    await lifecycle.drain(listeners, running.opts.shutdown_timeout)
    await _shutdown(listeners, source_task, health, metrics)
    if handler.forwarding is not None:
        handler.forwarding.close()
    flusher.cancel()
    log.info("stopped")
    logs.flush(final=True)
    return 0


def _plugins(opts: ServeOptions, api: bool) -> tuple[str, ...]:
    fwd = bool(opts.upstreams or opts.resolv_conf or opts.stubs or opts.kube_dns_configmap)
    return lifecycle.plugins(kubernetes=True, errors=True, log=opts.query_log, forward=fwd, cache=fwd,
                             loop=fwd and opts.loop_detect, health=api or bool(opts.health),
                             ready=api or bool(opts.ready), prometheus=bool(opts.metrics) or api,
                             reload=opts.config is not None, rrl=bool(opts.rrl_opts))


class Running:
    """The running server's parts that a reload may replace; `opts` is what is in force."""

    def __init__(self, opts: ServeOptions, store: ClusterStore, handler: Handler, listeners: Listeners,
                 sources: Sources, stop: asyncio.Event, workers: list[int] = ()) -> None:  # type: ignore[assignment]
        self.opts, self.store, self.handler, self.listeners = opts, store, handler, listeners
        self.sources, self.stop = sources, stop
        self.workers = list(workers)  # pids that reload on the SIGHUP we pass on
        # the options as the file and flags say (not as resolved at start, e.g. port 0 or a
        # worker's empty manifests): restart-only changes are reported against these
        self.loaded = self._load_quietly()

    def _load_quietly(self) -> ServeOptions | None:
        try:
            return self.opts.reload() if self.opts.reload is not None else None
        except (ValueError, StartupError):
            return None

    async def reload(self, why: str) -> None:
        """Re-read the config; apply it, or log why not and keep the running one."""
        if self.opts.reload is None:
            return
        if why == "SIGHUP":  # workers watch the file themselves, but only we get the signal
            for pid in self.workers:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGHUP)
        old = self.opts
        try:
            fresh = self.opts.reload()
            # sockets, the source and the process layout stay as they run (config.RESTART_ONLY)
            new = replace(fresh, **{k: getattr(old, k) for k in _RESTART_ONLY})
            zone = build_zone(new, self.store)
            forwarding = build_forwarding(new, zone.zone)
        except (ValueError, StartupError) as exc:  # config.ConfigError is a ValueError
            self.sources.reloads.failed += 1
            for problem in getattr(exc, "problems", None) or [str(exc)]:
                log.error("%s", problem)
            log.error("config %s rejected (%s); keeping the running config", self.opts.config, why)
            return
        baseline = self.loaded or old
        restart = [k for k in _RESTART_ONLY if getattr(baseline, k) != getattr(fresh, k)]
        applied = [f.name for f in fields(new) if f.compare and getattr(old, f.name) != getattr(new, f.name)]
        self.opts, self.loaded = new, fresh
        self._apply(old, new, zone, forwarding)
        self.sources.reloads.succeeded += 1
        self.sources.reloads.last_success = time.time()
        log.info("config reloaded from %s (%s): %s", new.config, why, ", ".join(applied) or "no changes")
        if restart:
            log.warning("config %s changes %s: takes effect on restart", new.config, ", ".join(restart))

    def _apply(self, old: ServeOptions, new: ServeOptions, zone: ClusterZone, forwarding: Forwarding | None) -> None:
        """Swap in the new parts; the store (the watch cache) and the sockets stay."""
        h = self.handler
        old_zone, h.zone = h.zone, zone
        if old_zone is not None and old_zone is not zone:
            old_zone.close()
        h.max_udp = new.max_udp
        self.listeners.limits.idle_timeout = new.tcp_idle_timeout
        self.listeners.limits.max_connections = new.max_tcp_connections
        if (old.query_log, old.query_log_sample) != (new.query_log, new.query_log_sample):
            self.listeners.set_query_log(lifecycle.query_log(new.query_log, new.query_log_sample))
        self.listeners.set_rrl(limiter(new.rrl_opts, self.listeners.rrl))
        self.sources.rrl = self.listeners.rrl
        if (old.log_level, old.log_format, old.error_consolidate) != (new.log_level, new.log_format,
                                                                      new.error_consolidate):
            logs.setup(new.log_level, new.log_format, new.error_consolidate)
        old_forwarding, h.forwarding = h.forwarding, forwarding
        self.sources.forwarding = forwarding
        if forwarding is not None:
            forwarding.start(self.stop.set, self.listeners.bound)
        if old_forwarding is not None:  # once its questions in flight had time to finish
            grace = (old.forward_opts or {}).get("timeout", 5.0) + 1.0
            asyncio.get_running_loop().call_later(grace, old_forwarding.close)


#: ServeOptions a reload cannot change in place: sockets, the source (a new one would
#: drop the watch cache), the process layout
_RESTART_ONLY = tuple(sorted(RESTART_ONLY))


async def _shutdown(listeners: Listeners, source_task: asyncio.Task | None, health: HealthServer | None,
                    metrics: Any = None) -> None:
    """DNS listeners first, then the watch, then the health and metrics endpoints."""
    listeners.close()
    if source_task is not None:
        source_task.cancel()
        try:
            await source_task
        except (asyncio.CancelledError, Exception):
            pass
    if health is not None:
        await health.stop()
    if metrics is not None:
        await metrics.stop()


async def trim_when_synced(store: ClusterStore) -> None:
    """Give the heap of the initial sync back to the OS once the store has synced."""
    for _ in range(600):
        if store.synced:
            give_back_memory()
            return
        await asyncio.sleep(0.1)


def give_back_memory() -> None:
    """Return the heap freed after the initial sync to the OS.

    The list pages of a large cluster are parsed into short-lived JSON trees; glibc keeps
    the freed memory in its arenas, so RSS would carry the peak of the sync (about 5 MB
    at 10,000 services) for the process's life. malloc_trim(3) releases it; elsewhere
    (musl, macOS) this does nothing.
    """
    import ctypes
    import gc

    gc.collect()
    # the compiled zone and the store are hundreds of thousands of long-lived objects;
    # frozen, the cyclic GC stops re-scanning them on every full collection
    gc.freeze()
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


def run(coro) -> int:  # noqa: ANN001 - a coroutine returning an exit code
    """Run on uvloop when it imports (uvicorn loops/auto.py), else asyncio."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


async def serve_worker(opts: ServeOptions, index: int, read_fd: int, metrics_fd: int) -> int:
    """A worker: its own store and listeners, fed by the leader's journal; its counters go
    to the leader's /metrics; it reloads on SIGHUP (the leader forwards it) or a changed
    file, and drains like the leader when the journal ends."""
    from clusterdns.app.workers import JournalReader
    from clusterdns.obs.metrics import DNSCollector, FamilyFeed

    opts = replace(opts, manifests=[])
    store, handler = build_cluster(opts)
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: JournalReader(store.apply_journal, done), os.fdopen(read_fd, "rb", buffering=0))
    listeners = Listeners(handler, TCPLimits(opts.tcp_idle_timeout, opts.max_tcp_connections),
                          lifecycle.query_log(opts.query_log, opts.query_log_sample), limiter(opts.rrl_opts))
    await lifecycle.listen(listeners, opts.listen, reuse_port=True)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, done.set)
    sources = Sources(handler=handler, forwarding=handler.forwarding,
                      tcp_limits=listeners.limits, rrl=listeners.rrl)  # each worker limits on its own
    feed = FamilyFeed(DNSCollector(handler.stats, sources), metrics_fd)
    tasks = [loop.create_task(feed.run())]
    running = Running(opts, store, handler, listeners, sources, done)
    reloader = Reloader(running.reload, opts.config, opts.watch_config)
    reloader.start()
    log.info("worker %d (pid %d) serving on %s", index, os.getpid(),
             ", ".join(f"{h}:{p}" for h, p in listeners.bound))
    await done.wait()
    await reloader.stop()
    await lifecycle.drain(listeners, running.opts.shutdown_timeout)
    feed.send()
    for t in tasks:
        t.cancel()
    if handler.forwarding is not None:
        handler.forwarding.close()
    return 0
