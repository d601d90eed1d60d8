"""The one Server every mode runs, in-process with real stacks on loopback: the start-up
line once the sockets answer, the stop order (listeners, watch, health and metrics,
forwarding), reload applied, rejected and restart-only keys reported, the lame duck cut
short by a second signal, and exit code 1 when forwarding loops back to us."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import dns.message
import pytest

from clusterdns.app.cluster import ClusterStack, Reload
from clusterdns.app.nodecache import NodeCacheStack
from clusterdns.app.server import Server
from clusterdns.app.workers import resolve_ports
from clusterdns.server.listeners import parse_listen
from clusterdns.settings.schema import NodeCacheConfig, ServeConfig
from helpers import DEMO, UDPClient

NAME = "httpd-svc.default.svc.cluster.local."
IP = "10.99.229.179"


class Lines(logging.Handler):
    """The clusterdns log lines of one test, whatever handlers other tests left behind."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    def count(self, text: str) -> int:
        return sum(text in line for line in self.lines)


@pytest.fixture
def lines() -> Iterator[Lines]:
    handler = Lines()
    logger = logging.getLogger("clusterdns")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def options(**kw: Any) -> ServeConfig:
    base = dict(manifests=[str(DEMO)], listen=["127.0.0.1:0"], lameduck=0.0, shutdown_timeout=1.0,
                loop_detect=False)
    return ServeConfig(**{**base, **kw})


def free_port() -> int:
    return parse_listen(resolve_ports(["127.0.0.1:0"], parse_listen)[0])[1]


async def ask(port: int, name: str = NAME, timeout: float = 2.0) -> dns.message.Message | None:
    """The reply, or None when nothing answers (no reply, or the port is closed)."""
    client = UDPClient(("127.0.0.1", port))
    try:
        wire = await client.ask(dns.message.make_query(name, "A").to_wire(), timeout)
    except ConnectionRefusedError:
        return None
    finally:
        client.close()
    return dns.message.from_wire(wire) if wire is not None else None


async def ttl(port: int) -> int:
    reply = await ask(port)
    assert reply is not None and reply.answer[0][0].address == IP
    return reply.answer[0].ttl


async def http_status(port: int, path: str) -> int:
    def get() -> int:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as resp:
                return resp.status
        except urllib.error.HTTPError as exc:
            return exc.code

    return await asyncio.to_thread(get)


async def eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


def dns_port(server: Server) -> int:
    assert server.stack is not None
    return server.stack.listeners.bound[0][1]


class File:
    """What the config file and flags say: a reload reads it, the test edits it."""

    def __init__(self, base: Any, **changes: Any) -> None:
        self.base, self.changes = base, changes

    def edit(self, **changes: Any) -> None:
        self.changes.update(changes)

    def load(self) -> Any:
        return replace(self.base, **self.changes)


class RecordingStack(ClusterStack):
    """serve's stack, noting when each of its parts is stopped (the parts stay real)."""

    def __init__(self, opts: ServeConfig, events: list[str]) -> None:
        super().__init__(opts)
        self.events = events

    async def open(self, stop: Callable[[], None]) -> None:
        await super().open(stop)
        self.events.append("serving" if self.listeners.bound else "not bound")
        self._note(self.listeners, "close", "listeners")
        self._note(self.health, "stop", "health")
        self._note(self.metrics, "stop", "metrics")
        self._note(self.handler.forwarding, "close", "forwarding")

    def _note(self, part: Any, method: str, name: str) -> None:
        original = getattr(part, method)

        async def noted_async(*a: Any) -> Any:
            self.events.append(name)
            return await original(*a)

        def noted(*a: Any) -> Any:
            self.events.append(name)
            return original(*a)

        setattr(part, method, noted_async if asyncio.iscoroutinefunction(original) else noted)


async def test_ready_line_comes_once_answering_and_stop_closes_listeners_first(lines: Lines) -> None:
    events: list[str] = []
    opts = options(health="127.0.0.1:0", ready="127.0.0.1:0", metrics="127.0.0.1:0", upstreams=["127.0.0.1:9"])
    server = Server(lambda: RecordingStack(opts, events))
    await server.startup()
    port = dns_port(server)
    assert lines.count(f"serving cluster.local on 127.0.0.1:{port} (udp+tcp)") == 1
    assert lines.count("ready in") == 1
    assert await ttl(port) == 5
    assert server.stack is not None and server.stack.health is not None
    assert await http_status(server.stack.health.health_port, "/health") == 200

    server.should_exit.set()
    await server.main_loop()
    assert await server.shutdown() == 0
    # the drain ends by closing the listeners; the ordered close starts with them again
    assert events == ["serving", "listeners", "listeners", "health", "metrics", "forwarding"]
    assert await ask(port, timeout=0.3) is None
    assert lines.lines[-1] == "stopped"


async def test_reload_applies_new_settings_and_keeps_the_sockets(lines: Lines) -> None:
    file = File(options(ttl=7))
    server = Server(lambda: ClusterStack(file.base, Reload(file.load, "clusterdns.yaml")))
    await server.startup()
    try:
        port = dns_port(server)
        assert await ttl(port) == 7
        file.edit(ttl=42)
        os.kill(os.getpid(), signal.SIGHUP)  # the real trigger, through the Reloader
        await eventually(lambda: lines.count("config reloaded") == 1)
        assert lines.count("config reloaded from clusterdns.yaml (SIGHUP): ttl") == 1
        assert await ttl(port) == 42 and dns_port(server) == port
        assert server.stack is not None and server.stack.sources.reloads.succeeded == 1
    finally:
        server.should_exit.set()
        await server.shutdown()


async def test_reload_that_cannot_build_is_rejected_and_the_running_config_stays(lines: Lines) -> None:
    file = File(options(ttl=7))
    server = Server(lambda: ClusterStack(file.base, Reload(file.load, "clusterdns.yaml")))
    await server.startup()
    try:
        file.edit(ttl=30, upstreams=["not an address"])
        await server.reload("SIGHUP")
        assert lines.count("config clusterdns.yaml rejected (SIGHUP); keeping the running config") == 1
        assert await ttl(dns_port(server)) == 7
        assert server.stack is not None and server.stack.sources.reloads.failed == 1
        assert server.stack.opts.ttl == 7 and lines.count("config reloaded") == 0
    finally:
        server.should_exit.set()
        await server.shutdown()


async def test_restart_only_key_is_reported_once_and_kept(lines: Lines) -> None:
    file = File(options())
    server = Server(lambda: ClusterStack(file.base, Reload(file.load, "clusterdns.yaml")))
    await server.startup()
    try:
        port = dns_port(server)
        file.edit(listen=["127.0.0.1:1"], ttl=9)
        await server.reload("config file changed")
        assert lines.count("config reloaded from clusterdns.yaml (config file changed): ttl") == 1
        assert lines.count("config clusterdns.yaml changes listen: takes effect on restart") == 1
        assert await ttl(port) == 9  # the new ttl, on the old socket
        assert server.stack is not None and server.stack.opts.listen == ["127.0.0.1:0"]
        await server.reload("config file changed")  # nothing new since the last load
        assert lines.count("takes effect on restart") == 1
        assert lines.count("config reloaded from clusterdns.yaml (config file changed): no changes") == 1
    finally:
        server.should_exit.set()
        await server.shutdown()


async def test_second_signal_ends_the_lame_duck(lines: Lines) -> None:
    opts = options(health="127.0.0.1:0", ready="127.0.0.1:0", lameduck=30.0)
    server = Server(lambda: ClusterStack(opts))
    running = asyncio.create_task(server.run())
    await eventually(lambda: lines.count("ready in") == 1)
    assert server.stack is not None and server.stack.health is not None
    ready_port = server.stack.health.ready_port
    started = time.monotonic()
    os.kill(os.getpid(), signal.SIGTERM)
    await eventually(lambda: lines.count("lame duck") == 1)
    assert await http_status(ready_port, "/ready") == 503
    assert await ttl(dns_port(server)) == 5  # still answering
    os.kill(os.getpid(), signal.SIGTERM)
    assert await asyncio.wait_for(running, 5) == 0
    assert time.monotonic() - started < 5
    assert lines.lines[-1] == "stopped"


async def test_forwarding_to_our_own_address_stops_with_exit_code_1(lines: Lines) -> None:
    port = free_port()
    opts = options(listen=[f"127.0.0.1:{port}"], upstreams=[f"127.0.0.1:{port}"])
    code = await asyncio.wait_for(Server(lambda: ClusterStack(opts)).run(), 5)
    assert code == 1
    assert lines.count(f"forwarding loop: upstream 127.0.0.1:{port}") == 1
    assert lines.count("stopped") == 0 and lines.count("lame duck") == 0


async def test_node_cache_runs_on_the_same_server_and_keeps_its_sockets_on_reload(lines: Lines) -> None:
    file = File(NodeCacheConfig(listen=["127.0.0.1:0"], health="", cluster_dns="127.0.0.1:9",
                                upstreams=["127.0.0.1:9"], loop_detect=False))
    server = Server(lambda: NodeCacheStack(file.load(), file.load, "node-cache.yaml"))
    await server.startup()
    try:
        assert lines.count("serving node-cache on 127.0.0.1:") == 1
        file.edit(listen=["127.0.0.1:1"], upstreams=["127.0.0.1:10"])
        await server.reload("SIGHUP")
        assert lines.count("config reloaded from node-cache.yaml (SIGHUP): upstreams") == 1
        assert lines.count("config node-cache.yaml changes listen: takes effect on restart") == 1
        assert server.stack is not None and server.stack.handler.forwarding is not None
        specs = [str(u.spec) for z in server.stack.handler.forwarding.table.zones if z.zone == "."
                 for u in z.forwarder.upstreams]
        assert specs == ["127.0.0.1:10"]
        # the old socket is still ours
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s, pytest.raises(OSError):
            s.bind(server.stack.listeners.bound[0])
    finally:
        server.should_exit.set()
        assert await server.shutdown() == 0
