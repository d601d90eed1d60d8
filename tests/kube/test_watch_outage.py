"""API down, then back: the store keeps the last state; one log line each way."""

from __future__ import annotations

import asyncio
import itertools
import logging

import pytest

from conftest import eventually
from kubeapi import KubeAPIServer, endpoint_slice, service


def _lines(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


async def test_api_down_then_back_keeps_state_and_logs_once(kubeapi: KubeAPIServer, start_source,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="clusterdns")
    kubeapi.apply(service("app", "web", "10.96.0.10"))
    kubeapi.apply(endpoint_slice("app", "web-1", "web", ["10.244.0.7"]))
    rs = await start_source(backoff_initial=0.02, backoff_max=0.1)
    before = (dict(rs.store.services), dict(rs.store.views), set(rs.store.namespaces))
    changes: list[object] = []
    rs.store.subscribe(changes.append)

    await kubeapi.stop_listening()
    await eventually(lambda: sum(st.failures for st in rs.source.states.values()) >= 10, what="many retries")
    assert (dict(rs.store.services), dict(rs.store.views), set(rs.store.namespaces)) == before
    assert changes == [] and rs.store.synced and rs.source.synced.is_set()
    assert rs.source.outage

    await kubeapi.start_listening()
    kubeapi.apply(service("app", "after", "10.96.0.11"))
    await eventually(lambda: rs.store.view("app", "after"), what="change after the outage")
    await eventually(lambda: not rs.source.outage, what="recovery")

    assert len(_lines(caplog, "Kubernetes API unavailable")) == 1, "outage logged once, not per retry"
    assert len(_lines(caplog, "Kubernetes API available again")) == 1
    assert len(_lines(caplog, "still unavailable")) >= 5  # the retries were there, at debug level
    assert kubeapi.lists("services") == 1, "the watch resumed from its version: no re-list"


async def test_503_answers_are_retried_with_growing_backoff(kubeapi: KubeAPIServer, start_source) -> None:
    """Consecutive failures wait longer each time (exponential, jittered), then recover."""
    fault = kubeapi.fail(503, resource="services", on="list", count=5)
    rs = await start_source(wait=False, backoff_initial=0.02, backoff_max=10.0)
    await eventually(rs.source.synced.is_set, what="sync after the 503s")
    times = fault.served + [next(r.at for r in kubeapi.requests if r.resource == "services" and r.status == 200)]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert len(gaps) == 5
    # equal jitter: the n-th wait is within [base*2^(n-1)/2, base*2^(n-1)]
    for n, gap in enumerate(gaps):
        assert gap >= 0.02 * 2**n / 2 * 0.9, gaps
    assert gaps[-1] > gaps[0] * 3
    assert rs.state("services").failures == 0
    await asyncio.sleep(0)


async def test_answers_unchanged_while_the_api_is_down(kubeapi: KubeAPIServer, serve) -> None:
    """End to end: the process keeps answering (and stays ready) from its last state."""
    kubeapi.apply(service("app", "web", "10.96.0.10"))
    kubeapi.apply(service("app", "db", "None"))
    kubeapi.apply(endpoint_slice("app", "db-1", "db", ["10.244.0.1"]))
    dns = await serve()
    names = ["web.app.svc.cluster.local.", "db.app.svc.cluster.local.", "gone.app.svc.cluster.local."]
    before = [await dns.answer(n) for n in names]
    assert before[0] == ("NOERROR", ["10.96.0.10"]) and before[2][0] == "NXDOMAIN"

    await kubeapi.stop_listening()
    for _ in range(10):  # about a second of outage, many reconnect attempts
        assert [await dns.answer(n) for n in names] == before
        assert await dns.http("/ready") == (200, "OK")
        await asyncio.sleep(0.1)
    await kubeapi.start_listening()
    kubeapi.apply(service("app", "gone", "10.96.0.99"))
    await dns.wait_for(names[2], ("NOERROR", ["10.96.0.99"]), timeout=5)

    # every watch reconnects in its own backoff; the recovery is logged when the last one has
    await eventually(lambda: dns.count("Kubernetes API available again"), timeout=5, what="recovery line")
    assert dns.count("Kubernetes API unavailable") == 1
    assert dns.count("Kubernetes API available again") == 1
    assert kubeapi.lists("services") == 1
