"""Fixtures for the Kubernetes source: a test API server, a kubeconfig, a running source."""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import dns.asyncquery
import dns.message
import dns.rcode
import pytest

from clusterdns.kube.client import load_connection
from clusterdns.kube.store import ClusterStore
from clusterdns.kube.watch import KubeSource, WatchSettings
from helpers import ServerProcess
from kubeapi import KubeAPIServer, write_kubeconfig

#: settings that make every timeout and backoff fit a test of about a second
FAST = dict(inactivity_timeout=2.0, backoff_initial=0.05, backoff_max=0.3, watch_timeout=30.0, connect_timeout=2.0)


@pytest.fixture(autouse=True)
def _no_ambient_kube_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Connect through the kubeconfig the test writes, never through the host's."""
    for var in ("KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT", "KUBECONFIG"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
async def kubeapi() -> AsyncIterator[KubeAPIServer]:
    async with KubeAPIServer(bookmark_interval=0.2) as api:
        yield api


@pytest.fixture
def kubeconfig(kubeapi: KubeAPIServer, tmp_path: Path) -> Path:
    return write_kubeconfig(tmp_path / "kubeconfig", kubeapi.url)


async def eventually(check: Callable[[], Any], timeout: float = 5.0, what: str = "") -> Any:
    """Poll `check` until truthy (bounded in time); fail with `what` otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or check}")
        await asyncio.sleep(0.01)


class RunningSource:
    """A KubeSource running as a task, with its store; stopped by the fixture."""

    def __init__(self, source: KubeSource, task: asyncio.Task) -> None:
        self.source = source
        self.store = source.store
        self.task = task

    def state(self, resource: str):
        return self.source.states[resource]


@pytest.fixture
async def start_source(kubeapi: KubeAPIServer,
                       kubeconfig: Path) -> AsyncIterator[Callable[..., Awaitable[RunningSource]]]:
    """`await start_source(wait=True, endpoint_pod_names=False, **settings)`.

    With `wait`, returns once synced and every watch stream is open, so that what the
    test does next happens to a watching client, not to one still connecting.
    """
    running: list[RunningSource] = []

    async def start(wait: bool = True, endpoint_pod_names: bool = False, **settings: Any) -> RunningSource:
        store = ClusterStore(endpoint_pod_names=endpoint_pod_names)
        source = KubeSource(store, load_connection(str(kubeconfig)), WatchSettings(**(FAST | settings)))
        rs = RunningSource(source, asyncio.create_task(source.run()))
        running.append(rs)
        if wait:
            async with asyncio.timeout(5):
                await source.synced.wait()
            streams = sum(len(r.source.states) for r in running)
            await eventually(lambda: kubeapi.open_streams() >= streams, what="watch streams open")
        return rs

    yield start
    for rs in running:
        rs.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await rs.task


# ------------------------------------------------------------------ a real `clusterdns serve`
HEALTH_LINE = re.compile(r"health on \S+:(\d+)/health, readiness on \S+:(\d+)/ready")


class ClusterDNS:
    """A `clusterdns serve` child process reading the test API; async helpers to probe it.

    The API server runs on the test's event loop, so everything that waits on the child
    (start, stop) runs in a thread and queries use dnspython's asyncio client.
    """

    def __init__(self, proc: ServerProcess) -> None:
        self.proc = proc

    @property
    def dns_port(self) -> int:
        return self.proc.port

    def ports(self) -> tuple[int, int]:
        m = next(HEALTH_LINE.search(line) for line in self.proc.lines if HEALTH_LINE.search(line))
        return int(m.group(1)), int(m.group(2))

    async def query(self, name: str, rdtype: str = "A", tcp: bool = False) -> dns.message.Message:
        q = dns.message.make_query(name, rdtype)
        if tcp:
            return await dns.asyncquery.tcp(q, "127.0.0.1", port=self.dns_port, timeout=2)
        return await dns.asyncquery.udp(q, "127.0.0.1", port=self.dns_port, timeout=2)

    async def answer(self, name: str, rdtype: str = "A") -> tuple[str, list[str]]:
        """(rcode name, sorted rdata texts) of one query."""
        r = await self.query(name, rdtype)
        return dns.rcode.to_text(r.rcode()), sorted(rd.to_text() for rrset in r.answer for rd in rrset)

    async def wait_for(self, name: str, expected: tuple[str, list[str]], rdtype: str = "A",
                       timeout: float = 3.0) -> None:
        """Query until the answer is `expected` (bounded in time)."""
        deadline = time.monotonic() + timeout
        while (got := await self.answer(name, rdtype)) != expected:
            if time.monotonic() > deadline:
                raise AssertionError(f"{name} {rdtype}: wanted {expected}, last answer {got}")
            await asyncio.sleep(0.01)

    async def http(self, which: str) -> tuple[int, str]:
        health, ready = self.ports()
        port = health if which == "/health" else ready
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as s,
            s.get(f"http://127.0.0.1:{port}{which}") as resp,
        ):
            return resp.status, await resp.text()

    def count(self, text: str) -> int:
        return sum(text in line for line in self.proc.lines)

    def signal(self, sig: int = signal.SIGTERM) -> None:
        assert self.proc.proc is not None
        self.proc.proc.send_signal(sig)


@pytest.fixture
async def serve(kubeconfig: Path) -> AsyncIterator[Callable[..., Awaitable[ClusterDNS]]]:
    """`await serve(*extra_args)`: clusterdns serve --kubeconfig <test API> on loopback, port 0.

    `base=False` runs exactly the given arguments (the environment is inherited).
    """
    started: list[ServerProcess] = []

    async def start(*extra: str, base: bool = True) -> ClusterDNS:
        args = ["serve", "--kubeconfig", str(kubeconfig), "--listen", "127.0.0.1:0", "--health", "127.0.0.1:0",
                "--ready", "127.0.0.1:0", "--metrics", "127.0.0.1:0", "--lameduck", "0"] if base else []
        proc = ServerProcess(*args, *extra)
        started.append(proc)
        await asyncio.to_thread(proc.start)
        return ClusterDNS(proc)

    yield start
    for proc in started:
        await asyncio.to_thread(proc.stop)
