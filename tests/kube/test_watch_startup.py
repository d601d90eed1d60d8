"""Before the first sync: SERVFAIL, never NXDOMAIN; `--sync-timeout` then serves anyway."""

from __future__ import annotations

import pytest

from clusterdns.kube.store import ClusterStore
from clusterdns.kube.watch import KubeSource
from kubeapi import KubeAPIServer, service

SVC = "web.app.svc.cluster.local."


async def test_servfail_before_sync_then_answers(kubeapi: KubeAPIServer, serve) -> None:
    kubeapi.apply(service("app", "web", "10.96.0.10"))
    kubeapi.fail(503, resource="services", on="list", count=10**6)
    dns = await serve("--sync-timeout", "0.3")

    assert dns.count("not synced with the Kubernetes API after 0.3 s (missing: services)") == 1
    assert dns.count("not synced yet") == 1  # the "serving ..." line says so too
    assert await dns.answer(SVC) == ("SERVFAIL", [])
    assert await dns.answer("nope.app.svc.cluster.local.") == ("SERVFAIL", [])  # not NXDOMAIN
    assert await dns.http("/ready") == (503, "services\n")
    assert await dns.http("/health") == (200, "OK")

    kubeapi.faults.clear()
    await dns.wait_for(SVC, ("NOERROR", ["10.96.0.10"]))
    assert await dns.answer("nope.app.svc.cluster.local.") == ("NXDOMAIN", [])
    assert await dns.http("/ready") == (200, "OK")


async def test_start_waits_for_the_first_sync(kubeapi: KubeAPIServer, serve) -> None:
    """With a reachable API the first answer is already right: no SERVFAIL window."""
    kubeapi.apply(service("app", "web", "10.96.0.10"))
    dns = await serve("--sync-timeout", "5")
    assert await dns.answer(SVC) == ("NOERROR", ["10.96.0.10"])
    assert dns.count("not synced") == 0


async def test_wait_synced_gives_up_after_the_timeout(kubeapi: KubeAPIServer, kubeconfig,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    from clusterdns.kube.client import load_connection
    source = KubeSource(ClusterStore(), load_connection(str(kubeconfig)))
    assert await source.wait_synced(0.05) is False  # never started: nothing syncs
    assert "serving anyway" in caplog.text and "services, endpointslices, namespaces" in caplog.text
    source.synced.set()
    assert await source.wait_synced(0.05) is True
