"""`clusterdns serve`'s stack: the parts of the cluster DNS for one process, run by
server.Server (the lifecycle, reload and stop order live there).

Data flows one way: source (manifests or the API watch) -> ClusterStore ->
ClusterZone -> Handler/AnswerTable -> UDP/TCP listeners. With the API watch, /health
and /ready are served too, so SIGTERM starts a lame-duck period (CoreDNS `health
{ lameduck }`). A reload recompiles the zone and rebuilds forwarding from the new options
while the store (the watch cache) and the sockets stay. With `--workers`, the leader's
stack owns the source and each worker's stack replays its journal (workers.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from clusterdns.app import lifecycle
from clusterdns.app.lifecycle import StartupError
from clusterdns.app.server import Rebuilt, Server, Stack
from clusterdns.app.workers import Journal, JournalReader, Worker
from clusterdns.cache.settings import cache_kwargs
from clusterdns.cluster.compile import ZoneSettings
from clusterdns.cluster.external import ExternalSettings, ExternalZone
from clusterdns.cluster.zone import ClusterZone
from clusterdns.forward.forwarding import Forwarding, cluster_forwarding
from clusterdns.forward.settings import forward_kwargs
from clusterdns.kube.manifests import bulk_load, load_manifests
from clusterdns.kube.store import ClusterStore
from clusterdns.obs.sources import Sources
from clusterdns.server.handler import Handler
from clusterdns.server.listeners import Listeners, parse_listen
from clusterdns.server.rrl import limiter
from clusterdns.server.settings import rrl_kwargs
from clusterdns.server.tcp import TCPLimits, Transfers
from clusterdns.settings.config import RESTART_ONLY
from clusterdns.settings.schema import ServeConfig

if TYPE_CHECKING:  # imported where used: kubernetes and aiohttp cost ~0.4 s of start-up from manifests
    from clusterdns.kube.watch import KubeSource

log = logging.getLogger("clusterdns")


@dataclass(frozen=True)
class Reload:
    """Where a reload reads from: `load` re-reads the file and the flags typed (raises
    ConfigError), `path` names the file in log lines; both None without --config."""

    load: Callable[[], ServeConfig] | None = None
    path: str | None = None


NO_RELOAD = Reload()


def build_cluster(opts: ServeConfig) -> tuple[ClusterStore, Handler]:
    """Store, compiled zone and handler, wired so store changes recompile the zone."""
    store = ClusterStore(endpoint_pod_names=opts.endpoint_pod_names)
    zone = build_zone(opts, store)
    external = build_external(opts, store)
    return store, Handler(zone, opts.max_udp, build_forwarding(opts, zone.zone), external=external)


def _own_addresses(opts: ServeConfig) -> tuple[str, ...]:
    return tuple(h for h, _ in map(parse_listen, opts.listen) if h not in ("0.0.0.0", "::"))


def build_zone(opts: ServeConfig, store: ClusterStore) -> ClusterZone:
    own = _own_addresses(opts)
    settings = ZoneSettings(
        opts.zone, opts.ttl, opts.pods, opts.ignore_empty_service, own, refuse_tld_namespaces=opts.refuse_tld_namespaces
    )
    return ClusterZone(store, settings)


def build_external(opts: ServeConfig, store: ClusterStore) -> ExternalZone | None:
    """The external zones (`--external-zone`), following the same store."""
    if not opts.external_zones:
        return None
    cluster = opts.zone.lower().strip(".")
    for z in opts.external_zones:
        name = z.lower().strip(".")
        if name == cluster or name.endswith("." + cluster) or cluster.endswith("." + name):
            raise StartupError(f"external zone {z} overlaps the cluster zone {opts.zone}: one contains the other")
    settings = ExternalSettings(
        tuple(opts.external_zones), opts.external_apex, opts.external_headless, opts.external_ttl, _own_addresses(opts)
    )
    return ExternalZone(store, settings)


def build_forwarding(opts: ServeConfig, zone: str) -> Forwarding | None:
    c = opts.cache
    try:
        return cluster_forwarding(
            zone,
            upstreams=opts.upstreams,
            resolv_conf=opts.resolv_conf,
            stubs=_stubs(opts),
            kube_dns_configmap=opts.kube_dns_configmap,
            max_udp=opts.max_udp,
            loop_detect=opts.loop_detect,
            cache_opts=cache_kwargs(c, c.success_ttl, c.denial_ttl),
            forward_opts=forward_kwargs(opts.forward),
        )
    except (ValueError, OSError) as exc:
        raise StartupError(f"forwarding: {exc}") from None


def _stubs(opts: ServeConfig) -> list[str]:
    """stub_domains in the ZONE=IP[,IP...] form forwarding reads (the flags' form)."""
    return [f"{zone}={','.join(servers)}" for zone, servers in opts.stub_domains.items()]


def build_source(opts: ServeConfig, store: ClusterStore) -> KubeSource:
    """The API watch feeding `store`; a bad kubeconfig is a StartupError."""
    from clusterdns.kube.client import ApiConfigError, load_connection
    from clusterdns.kube.watch import KubeSource, WatchSettings

    try:
        conn = load_connection(opts.kubeconfig, opts.context)
    except ApiConfigError as exc:
        raise StartupError(f"{exc} (pass --kubeconfig PATH [--context NAME], or run in a pod)") from None
    settings = WatchSettings(namespaces=frozenset(opts.namespaces), labels=opts.labels, pods=opts.pods == "verified")
    return KubeSource(store, conn, settings)


def _log_source_end(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("the Kubernetes API watch stopped; answers will not change any more", exc_info=task.exception())


class _ClusterParts(Stack):
    """What the leader and the workers of `serve` share: settings, reload, the zone."""

    restart_only = RESTART_ONLY

    def __init__(
        self,
        opts: ServeConfig,
        store: ClusterStore,
        handler: Handler,
        sources: Sources,
        listeners: Listeners,
        reload: Reload,
    ) -> None:
        super().__init__(
            opts, handler, listeners, sources, load=reload.load, config=reload.path, watch_config=opts.watch_config
        )
        self.store = store

    def rebuild(self, opts: ServeConfig) -> Rebuilt:
        """A zone recompiled from the same store (the watch cache stays) and new forwarding."""
        zone = build_zone(opts, self.store)
        try:
            forwarding = build_forwarding(opts, zone.zone)
            external = build_external(opts, self.store)
        except BaseException:
            zone.close()
            raise
        # the external zones are swapped here, last: nothing between this and the swap of
        # the rest (Server._apply) can fail or yield to the event loop
        old, self.handler.external = self.handler.external, external
        if old is not None:
            old.close()
        return Rebuilt(forwarding, zone)


def _listeners(opts: ServeConfig, handler: Handler, current: Callable[[], ServeConfig]) -> Listeners:
    """The sockets; zone transfers read `current()`, the settings in force, so a reload applies them."""
    transfers = Transfers(lambda: (current().transfer_to, current().max_transfers))
    return Listeners(
        handler,
        TCPLimits(opts.tcp_idle_timeout, opts.max_tcp_connections, transfers=transfers),
        lifecycle.query_log(opts.query_log, opts.query_log_sample),
        limiter(rrl_kwargs(opts.rrl)),
    )


class ClusterStack(_ClusterParts):
    """`clusterdns serve`: the source (manifests or the API watch), the zone, forwarding,
    /health and /ready with the API, /metrics; with `journal`, the leader of `--workers`."""

    def __init__(
        self,
        opts: ServeConfig,
        reload: Reload = NO_RELOAD,
        journal: Journal | None = None,
        workers: Sequence[Worker] = (),
    ) -> None:
        store, handler = build_cluster(opts)
        self.source = None if opts.manifests else build_source(opts, store)
        listeners = _listeners(opts, handler, lambda: self.opts)
        sources = Sources(
            handler=handler,
            forwarding=handler.forwarding,
            kube=self.source,
            store=store,
            tcp_limits=listeners.limits,
            transfers=listeners.limits.transfers,
            plugins=_plugins(opts, self.source is not None, reload.path is not None),
            rrl=listeners.rrl,
        )
        super().__init__(opts, store, handler, sources, listeners, reload)
        self.journal = journal
        self.workers = list(workers)
        self.sighup_pids = [w.pid for w in self.workers]
        self.skipped = 0

    async def open(self, stop: Callable[[], None]) -> None:
        opts, store, source = self.opts, self.store, self.source
        if self.journal is not None:
            await self.journal.connect()
            store.follow(self.journal.send)
        if opts.manifests:
            with bulk_load():
                objects, self.skipped = load_manifests(
                    opts.manifests, namespaces=opts.namespaces, labels=opts.labels, pod_names=opts.endpoint_pod_names
                )
                store.load(objects)
        if source is not None or opts.health or opts.ready:
            from clusterdns.obs.health import HealthServer

            self.health = HealthServer(
                lifecycle.bind_address(opts.health or ":8080", "/health", "--health (config `health:`)"),
                lifecycle.bind_address(opts.ready or ":8181", "/ready", "--ready (config `ready:`)"),
                source.missing if source is not None else None,
            )
            try:
                await self.health.start()
            except OSError as exc:
                raise StartupError(
                    f"cannot serve /health or /ready: {exc.strerror or exc} "
                    "(pick other addresses with --health / --ready)"
                ) from None
        self.metrics = await lifecycle.start_metrics(
            opts.metrics or (":9153" if source is not None else None), self.sources
        )
        if self.metrics is not None and self.workers:
            self.metrics.collector.remote = await lifecycle.worker_families([w.metrics for w in self.workers])
        if source is not None:
            source.observers.append(lifecycle.programming_observer(store, self.sources))
            self.source_task = asyncio.create_task(source.run(), name="kube-source")
            self.source_task.add_done_callback(_log_source_end)
            await source.wait_synced(opts.sync_timeout)
        await lifecycle.listen(self.listeners, opts.listen, reuse_port=opts.workers > 1)

    def ready_line(self, seconds: float) -> tuple[Any, ...]:
        store = self.store
        what = f"{len(store.services)} services, {len(store.slices)} endpoint slices"
        what += (
            f", {self.skipped} skipped objects"
            if self.source is None
            else f" from the API ({'synced' if store.synced else 'not synced yet'})"
        )
        return ("serving %s on %s (udp+tcp): %s; ready in %.2fs", self.opts.zone, _bound(self.listeners), what, seconds)

    def serving(self) -> None:
        self.tasks.append(asyncio.create_task(trim_when_synced(self.store), name="trim"))


class WorkerStack(_ClusterParts):
    """One `--workers` process: its own store fed by the leader's journal (no source), its
    own listeners on the shared port; its counters go up its metrics pipe; it stops when
    the journal ends (the leader is gone or stopping)."""

    checks_loops = False  # the leader probes for a loop; a worker's probe would be one more

    def __init__(
        self, opts: ServeConfig, index: int, read_fd: int, metrics_fd: int, reload: Reload = NO_RELOAD
    ) -> None:
        from clusterdns.obs.metrics import DNSCollector, FamilyFeed

        opts = replace(opts, manifests=[])
        store, handler = build_cluster(opts)
        listeners = _listeners(opts, handler, lambda: self.opts)
        sources = Sources(
            handler=handler,
            forwarding=handler.forwarding,
            tcp_limits=listeners.limits,
            rrl=listeners.rrl,
            transfers=listeners.limits.transfers,
        )  # each worker limits on its own
        super().__init__(opts, store, handler, sources, listeners, reload)
        self.index, self.read_fd = index, read_fd
        self.feed = FamilyFeed(DNSCollector(handler.stats, sources), metrics_fd)

    async def open(self, stop: Callable[[], None]) -> None:
        loop = asyncio.get_running_loop()
        await loop.connect_read_pipe(
            lambda: JournalReader(self.store.apply_journal, stop), os.fdopen(self.read_fd, "rb", buffering=0)
        )
        await lifecycle.listen(self.listeners, self.opts.listen, reuse_port=True)
        self.tasks.append(loop.create_task(self.feed.run(), name="metrics-feed"))

    def ready_line(self, seconds: float) -> tuple[Any, ...]:
        return ("worker %d (pid %d) serving on %s", self.index, os.getpid(), _bound(self.listeners))

    def closing(self) -> None:
        self.feed.send()  # the last counts, after the drain


def _bound(listeners: Listeners) -> str:
    return ", ".join(f"{h}:{p}" for h, p in listeners.bound)


async def serve(
    opts: ServeConfig, reload: Reload = NO_RELOAD, journal: Journal | None = None, workers: Sequence[Worker] = ()
) -> int:
    """Run the cluster DNS server until SIGTERM/SIGINT; with `journal`, feed the workers,
    whose metrics /metrics adds in. The exit code."""
    return await Server(lambda: ClusterStack(opts, reload, journal, workers)).run()


async def serve_worker(opts: ServeConfig, index: int, read_fd: int, metrics_fd: int, reload: Reload = NO_RELOAD) -> int:
    """A `--workers` process (fed by the leader's journal); it reloads on SIGHUP (the leader
    passes it on) or a changed file, and drains like the leader when the journal ends."""
    return await Server(lambda: WorkerStack(opts, index, read_fd, metrics_fd, reload)).run()


def _plugins(opts: ServeConfig, api: bool, reloads: bool) -> tuple[str, ...]:
    fwd = bool(opts.upstreams or opts.resolv_conf or opts.stub_domains or opts.kube_dns_configmap)
    return lifecycle.plugins(
        kubernetes=True,
        k8s_external=bool(opts.external_zones),
        errors=True,
        log=opts.query_log,
        forward=fwd,
        cache=fwd,
        loop=fwd and opts.loop_detect,
        health=api or bool(opts.health),
        ready=api or bool(opts.ready),
        prometheus=bool(opts.metrics) or api,
        reload=reloads,
        rrl=bool(rrl_kwargs(opts.rrl)),
        transfer=bool(opts.transfer_to),
    )


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
