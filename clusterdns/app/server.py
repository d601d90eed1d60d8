"""The one process lifecycle of every mode (uvicorn's `Server`): `run()` is `startup()`,
`main_loop()`, `shutdown()`. `serve`, `node-cache` and each `--workers` process only build
a `Stack`, their parts, and hand it over; when those parts start serving, reload and stop
is decided here, once.

Start: the stack brings its parts up in its own order (bind, probes, metrics, the watch's
first sync); then SIGTERM/SIGINT ask to stop, SIGHUP and the file watch ask to reload,
the "serving ... ready in" line is written, forwarding looks for a loop (one stops the
process with exit 1) and collapsed error bursts are flushed every few seconds.

Stop order (CoreDNS `health { lameduck }`, uvicorn's shutdown):

1. /ready fails (when it is served) and the lame duck keeps answering for `lameduck`
   seconds, so Service endpoints drain before anything closes; a second SIGTERM or
   SIGINT ends the lame duck at once;
2. the listeners stop taking queries: UDP sockets drop new datagrams (uvloop cannot
   pause a UDP socket, and closing it would lose the answers still to be sent), TCP
   servers stop accepting, connections stop reading;
3. answers already in the works (forwarded questions, pipelined TCP queries) are sent,
   for at most `shutdown_timeout` seconds;
4. the sockets close, then the watch, then /health, /ready and /metrics, then forwarding.

Reload, the same for every mode: re-read the settings, keep the stack's `restart_only`
keys at their running values, build what the stack rebuilds (zone, forwarding) before
touching anything, then swap it in and retune the listeners, limits and logging; the
record store and the sockets stay. A restart-only key that changed since the last load
is reported ("takes effect on restart"), never applied.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any, Protocol

from clusterdns.app.lifecycle import StartupError, query_log
from clusterdns.app.reload import Reloader
from clusterdns.obs import logs
from clusterdns.server.rrl import limiter
from clusterdns.server.settings import rrl_kwargs

if TYPE_CHECKING:
    from clusterdns.cluster.zone import ClusterZone
    from clusterdns.forward.forwarding import Forwarding
    from clusterdns.obs.health import HealthServer
    from clusterdns.obs.metrics import Metrics
    from clusterdns.obs.sources import Sources
    from clusterdns.server.handler import Handler
    from clusterdns.server.listeners import Listeners
    from clusterdns.settings.schema import NodeCacheConfig, ServeConfig

log = logging.getLogger("clusterdns")


@dataclass(frozen=True)
class Tuning:
    """The settings a reload applies in place (both modes name them alike: settings/schema.py's
    CommonSettings plus each mode's `rrl`, `forward` and `lameduck`)."""

    max_udp: int
    tcp_idle_timeout: float
    max_tcp_connections: int
    query_log: bool = False
    query_log_sample: int = 1
    rrl_opts: dict[str, Any] | None = None
    log_level: str = "info"
    log_format: str = "text"
    error_consolidate: float = 10.0
    forward_timeout: float = 5.0  # the old forwarding closes this long (+1 s) after a swap
    lameduck: float = 0.0
    shutdown_timeout: float = 5.0

    @classmethod
    def of(cls, cfg: ServeConfig | NodeCacheConfig) -> Tuning:
        """The in-place part of either mode's settings."""
        return cls(
            max_udp=cfg.max_udp,
            tcp_idle_timeout=cfg.tcp_idle_timeout,
            max_tcp_connections=cfg.max_tcp_connections,
            query_log=cfg.query_log,
            query_log_sample=cfg.query_log_sample,
            rrl_opts=rrl_kwargs(cfg.rrl),
            log_level=cfg.log_level,
            log_format=cfg.log_format,
            error_consolidate=cfg.error_consolidate,
            forward_timeout=cfg.forward.timeout,
            lameduck=cfg.lameduck,
            shutdown_timeout=cfg.shutdown_timeout,
        )


@dataclass
class Rebuilt:
    """What a reload builds from the new settings before anything running is touched."""

    forwarding: Forwarding | None
    zone: ClusterZone | None = None  # None: the mode has no zone of its own (node-cache)


class Stack(abc.ABC):
    """One mode's parts, built by the mode and run by `Server`.

    The constructor builds what needs no I/O (a failure there has nothing to undo);
    `open()` starts the rest in the mode's order. The parts a mode does not have stay None.
    """

    #: settings a reload cannot change in place (sockets, the record source, the process
    #: layout): they keep their running values and are reported as waiting for a restart
    restart_only: frozenset[str] = frozenset()
    #: look for a forwarding loop at start and after a reload (a loop stops the process)
    checks_loops: bool = True

    def __init__(
        self,
        opts: Any,
        handler: Handler,
        listeners: Listeners,
        sources: Sources,
        *,
        load: Callable[[], Any] | None,
        config: str | None,
        watch_config: bool,
    ) -> None:
        self.opts = opts  # the settings in force: a dataclass, compared field by field on reload
        self.handler = handler
        self.listeners = listeners
        self.sources = sources
        self.load = load  # re-reads the file and the flags given; None: nothing to reload from
        self.config = config  # the file, for the log lines
        self.watch_config = watch_config
        self.health: HealthServer | None = None
        self.metrics: Metrics | None = None
        self.source_task: asyncio.Task[None] | None = None  # the API watch
        self.tasks: list[asyncio.Task[Any]] = []  # background work, cancelled last
        self.sighup_pids: list[int] = []  # processes that get the SIGHUP we get (workers)

    @abc.abstractmethod
    async def open(self, stop: Callable[[], None]) -> None:
        """Bring the parts up (bind, probes, metrics, first sync); `stop` ends the process."""

    @abc.abstractmethod
    def ready_line(self, seconds: float) -> tuple[Any, ...]:
        """The start-up log line as (format, *args); `seconds` since the build began."""

    def tuning(self, opts: Any) -> Tuning:
        """`opts` as the settings the Server applies in place."""
        return Tuning.of(opts)

    @abc.abstractmethod
    def rebuild(self, opts: Any) -> Rebuilt:
        """The zone and forwarding for `opts`; ValueError or StartupError rejects the reload."""

    def serving(self) -> None:
        """Called once the start-up line is out: work that must not delay it."""
        return

    def closing(self) -> None:
        """Called last at shutdown, after every part has stopped."""
        return


class Server:
    """Runs a stack: startup, serving, reload, lame duck, drain, shutdown; `run()` the exit code."""

    def __init__(self, build: Callable[[], Stack]) -> None:
        self.build = build  # called in `startup()`: the start-up time counts the build
        self.stack: Stack | None = None
        self.should_exit = asyncio.Event()  # SIGTERM/SIGINT, a forwarding loop, a worker's journal end
        self.loaded: Any = None  # the settings as last loaded: restart-only changes are told against them
        self.reloader: Reloader | None = None
        self._flusher: asyncio.Task[None] | None = None

    async def run(self) -> int:
        await self.startup()
        await self.main_loop()
        return await self.shutdown()

    async def startup(self) -> None:
        started = time.monotonic()
        stack = self.stack = self.build()
        try:
            await stack.open(self.should_exit.set)
        except BaseException:
            await self._close()
            logs.flush(final=True)
            raise
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.should_exit.set)
        # the baseline before "serving": a supervisor may edit the file as soon as it reads the line
        self.loaded = self._load_quietly()
        self.reloader = Reloader(self.reload, stack.config, stack.watch_config)
        self.reloader.start()  # signal handlers before "serving": a supervisor may signal at once
        log.info(*stack.ready_line(time.monotonic() - started))
        self._start_forwarding(stack.handler.forwarding)
        self._flusher = loop.create_task(flush_logs(), name="log-flush")
        stack.serving()

    async def main_loop(self) -> None:
        await self.should_exit.wait()

    async def shutdown(self) -> int:
        """Lame duck, drain, close in order; 1 when a forwarding loop stopped us (it was logged)."""
        stack = self._stack
        if self.reloader is not None:
            await self.reloader.stop()
        forwarding = stack.handler.forwarding
        looped = forwarding is not None and forwarding.looped
        if not looped:
            tuning = stack.tuning(stack.opts)
            await lame_duck(self.should_exit, tuning.lameduck, stack.health)
            await drain(stack.listeners, tuning.shutdown_timeout)
        await self._close()
        if not looped:
            log.info("stopped")
        logs.flush(final=True)
        return 1 if looped else 0

    @property
    def _stack(self) -> Stack:
        if self.stack is None:
            raise RuntimeError("the server has not started")
        return self.stack

    async def _close(self) -> None:
        """DNS listeners first, then the watch, then the health and metrics endpoints, then
        forwarding; the stack's own background work last."""
        stack = self._stack
        stack.listeners.close()
        if stack.source_task is not None:
            stack.source_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await stack.source_task
        if stack.health is not None:
            await stack.health.stop()
        if stack.metrics is not None:
            await stack.metrics.stop()
        if stack.handler.forwarding is not None:
            stack.handler.forwarding.close()
        stack.closing()
        for task in [*stack.tasks, self._flusher]:
            if task is not None:
                task.cancel()

    def _start_forwarding(self, forwarding: Forwarding | None) -> None:
        stack = self._stack
        if forwarding is not None and stack.checks_loops:
            forwarding.start(self.should_exit.set, stack.listeners.bound)  # a loop ends the process

    # ------------------------------------------------------------------ reload

    def _load_quietly(self) -> Any:
        """The settings as the file and flags say now (not as resolved at start, e.g. port 0
        or a worker's empty manifests); None when there is nothing to load or it fails."""
        load = self._stack.load
        try:
            return load() if load is not None else None
        except (ValueError, StartupError):
            return None

    async def reload(self, why: str) -> None:
        """Re-read the settings; apply them, or log why not and keep the running ones."""
        stack = self._stack
        if stack.load is None:
            return
        if why == "SIGHUP":  # workers watch the file themselves, but only we get the signal
            for pid in stack.sighup_pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGHUP)
        old = stack.opts
        try:
            fresh = stack.load()
            new = replace(fresh, **{k: getattr(old, k) for k in stack.restart_only if hasattr(old, k)})
            rebuilt = stack.rebuild(new)
        except (ValueError, StartupError) as exc:  # settings' ConfigError is a ValueError
            stack.sources.reloads.failed += 1
            for problem in getattr(exc, "problems", None) or [str(exc)]:
                log.error("%s", problem)
            log.error("config %s rejected (%s); keeping the running config", stack.config, why)
            return
        restart = [k for k in changed(self.loaded or old, fresh) if k in stack.restart_only]
        applied = changed(old, new)
        stack.opts, self.loaded = new, fresh
        self._apply(stack.tuning(old), stack.tuning(new), rebuilt)
        stack.sources.reloads.succeeded += 1
        stack.sources.reloads.last_success = time.time()
        log.info("config reloaded from %s (%s): %s", stack.config, why, ", ".join(applied) or "no changes")
        if restart:
            log.warning("config %s changes %s: takes effect on restart", stack.config, ", ".join(restart))

    def _apply(self, old: Tuning, new: Tuning, rebuilt: Rebuilt) -> None:
        """Swap in the rebuilt parts and retune the rest; the store and the sockets stay."""
        stack = self._stack
        h, listeners = stack.handler, stack.listeners
        if rebuilt.zone is not None:
            old_zone, h.zone = h.zone, rebuilt.zone
            if old_zone is not None and old_zone is not rebuilt.zone:
                old_zone.close()
        h.max_udp = new.max_udp
        listeners.limits.idle_timeout = new.tcp_idle_timeout
        listeners.limits.max_connections = new.max_tcp_connections
        if (old.query_log, old.query_log_sample) != (new.query_log, new.query_log_sample):
            listeners.set_query_log(query_log(new.query_log, new.query_log_sample))
        listeners.set_rrl(limiter(new.rrl_opts, listeners.rrl))
        stack.sources.rrl = listeners.rrl
        if (old.log_level, old.log_format, old.error_consolidate) != (
            new.log_level,
            new.log_format,
            new.error_consolidate,
        ):
            logs.setup(new.log_level, new.log_format, new.error_consolidate)
        old_forwarding, h.forwarding = h.forwarding, rebuilt.forwarding
        stack.sources.forwarding = rebuilt.forwarding
        self._start_forwarding(rebuilt.forwarding)
        if old_forwarding is not None:  # once its questions in flight had time to finish
            asyncio.get_running_loop().call_later(old.forward_timeout + 1.0, old_forwarding.close)


def changed(old: Any, new: Any) -> list[str]:
    """The fields of two settings dataclasses that differ (sections count as one), in
    declaration order; fields with compare=False (callbacks) never count."""
    return [f.name for f in fields(old) if f.compare and getattr(old, f.name) != getattr(new, f.name, None)]


# ---------------------------------------------------------------------- stopping


class Draining(Protocol):
    """What `drain` needs from the listeners (server/listeners.py)."""

    def stop_reading(self) -> None: ...
    def pending(self) -> int: ...
    def close(self) -> None: ...


async def lame_duck(stop: asyncio.Event, seconds: float, health: Any) -> None:
    """Fail /ready and keep answering for `seconds`, or until `stop` is set again."""
    if health is None or seconds <= 0:
        return
    health.draining = True
    stop.clear()
    log.info("lame duck: /ready fails, still answering for %g s (signal again to stop now)", seconds)
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await stop.wait()


async def drain(listeners: Draining, timeout: float) -> None:
    """Stop taking queries, let the answers in flight go out (bounded), close."""
    listeners.stop_reading()
    pending = listeners.pending()
    log.info("listeners closed to new queries; %d answers in flight (waiting at most %g s)", pending, timeout)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while listeners.pending() and loop.time() < deadline:
        await asyncio.sleep(0.01)
    left = listeners.pending()
    if left:
        log.warning("%d answers still in flight after %g s; closing anyway", left, timeout)
    listeners.close()


async def flush_logs(interval: float = 5.0) -> None:
    """Write the counts of collapsed error bursts as their windows end (runs until cancelled)."""
    while True:
        await asyncio.sleep(interval)
        logs.flush()


def run(coro: Coroutine[Any, Any, int]) -> int:
    """Run on uvloop when it imports (uvicorn loops/auto.py), else asyncio."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)
