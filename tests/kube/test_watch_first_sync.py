"""First sync: every page of every resource lands in the store before `synced` is set."""

from __future__ import annotations

from conftest import eventually
from kubeapi import KubeAPIServer, endpoint_slice, namespace, service


async def test_first_sync_reads_every_page_into_the_store(kubeapi: KubeAPIServer, start_source) -> None:
    """More objects than one page: the continue token must be followed to the end."""
    kubeapi.apply(namespace("app"))
    for i in range(23):
        kubeapi.apply(service("app", f"svc{i}", f"10.96.1.{i + 1}"))
        kubeapi.apply(endpoint_slice("app", f"svc{i}-abc", f"svc{i}", [f"10.244.0.{i + 1}"]))

    rs = await start_source(page_size=5)

    assert rs.store.synced and rs.source.missing() == []
    assert len(rs.store.services) == 23 and len(rs.store.slices) == 23
    assert rs.store.view("app", "svc22").backends[0].ip == "10.244.0.23"
    assert rs.store.namespace_exists("app")
    assert kubeapi.counts[("services", "list-page")] == 5  # 23 items / 5 per page
    assert kubeapi.lists("services") == 1
    # the watch starts from the list's resourceVersion, with bookmarks
    watches = await eventually(lambda: [r for r in kubeapi.requests if r.resource == "services" and r.type == "watch"])
    watch = watches[0]
    assert watch.params["resourceVersion"] == str(kubeapi.rv)
    assert watch.params["allowWatchBookmarks"] == "true" and int(watch.params["timeoutSeconds"]) >= 30


async def test_not_synced_until_every_resource_is_listed(kubeapi: KubeAPIServer, start_source) -> None:
    """Readiness names what is missing; the store stays unsynced (SERVFAIL) meanwhile."""
    kubeapi.fail(503, resource="endpointslices", on="list", count=10**6)
    rs = await start_source(wait=False)

    await eventually(lambda: rs.state("services").synced and rs.state("namespaces").synced, what="services listed")
    assert rs.source.missing() == ["endpointslices"]
    assert not rs.store.synced and not rs.source.synced.is_set()

    kubeapi.faults.clear()
    await eventually(rs.source.synced.is_set, what="full sync")
    assert rs.store.synced and rs.source.missing() == []


async def test_pods_are_watched_only_when_asked(kubeapi: KubeAPIServer, start_source) -> None:
    """Pods cost memory and API load: only `pods verified` lists them."""
    rs = await start_source()
    assert "pods" not in rs.source.states and kubeapi.lists("pods") == 0
    rs2 = await start_source(pods=True)
    assert rs2.source.missing() == [] and kubeapi.lists("pods") == 1
