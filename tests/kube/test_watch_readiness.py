"""/ready follows the first sync and then stays ready (until-ready); /health is liveness only."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest

from clusterdns.obs.health import HealthServer, parse_address
from conftest import eventually
from kubeapi import KubeAPIServer, service


async def _get(session: aiohttp.ClientSession, port: int, path: str) -> tuple[int, str]:
    async with session.get(f"http://127.0.0.1:{port}{path}") as resp:
        return resp.status, await resp.text()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as session:
        yield session


async def test_ready_transitions_from_missing_to_ok_and_survives_outage(
        kubeapi: KubeAPIServer, start_source, http: aiohttp.ClientSession) -> None:
    kubeapi.fail(503, resource="endpointslices", on="list", count=10**6)
    kubeapi.fail(503, resource="namespaces", on="list", count=10**6)
    rs = await start_source(wait=False)
    health = HealthServer("127.0.0.1:0", "127.0.0.1:0", rs.source.missing)
    await health.start()
    try:
        await eventually(lambda: rs.state("services").synced, what="services listed")
        status, body = await _get(http, health.ready_port, "/ready")
        assert status == 503 and body.split() == ["endpointslices", "namespaces"]
        assert await _get(http, health.health_port, "/health") == (200, "OK")

        kubeapi.faults.clear()
        await eventually(rs.source.synced.is_set, what="sync")
        assert await _get(http, health.ready_port, "/ready") == (200, "OK")

        await kubeapi.stop_listening()  # API gone: DNS still answers from the store
        await eventually(lambda: rs.source.outage, what="outage noticed")
        assert await _get(http, health.ready_port, "/ready") == (200, "OK")
        assert await _get(http, health.health_port, "/health") == (200, "OK")

        health.draining = True  # SIGTERM: lame duck
        assert (await _get(http, health.ready_port, "/ready"))[0] == 503
        assert await _get(http, health.health_port, "/health") == (200, "OK")
    finally:
        await health.stop()


async def test_health_and_ready_can_share_one_address(http: aiohttp.ClientSession) -> None:
    """CoreDNS serves them on two ports, but one listener for both must work too."""
    probe = HealthServer("127.0.0.1:0", "127.0.0.1:0")
    await probe.start()
    port = probe.health_port
    await probe.stop()
    health = HealthServer(f"127.0.0.1:{port}", f"127.0.0.1:{port}", lambda: ["services"])
    await health.start()
    try:
        assert await _get(http, port, "/health") == (200, "OK")
        assert (await _get(http, port, "/ready"))[0] == 503
    finally:
        await health.stop()


@pytest.mark.parametrize("spec, parsed", [
    (":8080", ("", 8080)), ("127.0.0.1:8181", ("127.0.0.1", 8181)), ("[::1]:9", ("::1", 9)), ("::1", ("::1", 80)),
])
def test_addresses_parse_like_coredns(spec: str, parsed: tuple[str, int]) -> None:
    assert parse_address(spec, 80) == parsed


async def test_lameduck_fails_ready_but_keeps_answering(kubeapi: KubeAPIServer, serve) -> None:
    """SIGTERM: /ready 503 at once, /health and DNS still up, exit after the lame duck."""
    kubeapi.apply(service("app", "web", "10.96.0.10"))
    dns = await serve("--lameduck", "1")
    assert await dns.http("/ready") == (200, "OK")
    dns.signal(signal.SIGTERM)
    await eventually(lambda: dns.count("lame duck"), what="lame duck started")
    assert (await dns.http("/ready"))[0] == 503
    assert await dns.http("/health") == (200, "OK")
    assert await dns.answer("web.app.svc.cluster.local.") == ("NOERROR", ["10.96.0.10"])
    started = time.monotonic()
    assert await asyncio.to_thread(dns.proc.wait_exit, 5) == 0
    assert 0.3 < time.monotonic() - started < 2.0
