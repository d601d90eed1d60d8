"""Each watched kind: ADDED, MODIFIED and DELETED events reach the store."""

from __future__ import annotations

import pytest

from conftest import eventually
from kubeapi import KubeAPIServer, endpoint_slice, namespace, pod, service


async def test_service_added_modified_deleted(kubeapi: KubeAPIServer, start_source) -> None:
    rs = await start_source()
    kubeapi.apply(service("app", "web", "10.96.0.20"))
    await eventually(lambda: rs.store.view("app", "web"), what="service added")
    kubeapi.apply(service("app", "web", "10.96.0.21"))
    await eventually(lambda: rs.store.view("app", "web").service.cluster_ips == ("10.96.0.21",), what="modified")
    kubeapi.delete("services", "app", "web")
    await eventually(lambda: rs.store.view("app", "web") is None, what="service deleted")
    assert kubeapi.lists("services") == 1  # all of it through one watch


async def test_endpointslice_added_modified_deleted(kubeapi: KubeAPIServer, start_source) -> None:
    kubeapi.apply(service("app", "db", "None"))
    rs = await start_source()
    ips = lambda: sorted(b.ip for b in rs.store.view("app", "db").backends)  # noqa: E731
    kubeapi.apply(endpoint_slice("app", "db-v4", "db", ["10.244.0.1", "10.244.0.2"]))
    await eventually(lambda: ips() == ["10.244.0.1", "10.244.0.2"], what="slice added")
    kubeapi.apply(endpoint_slice("app", "db-v6", "db", ["fd00::1"], address_type="IPv6"))
    await eventually(lambda: ips() == ["10.244.0.1", "10.244.0.2", "fd00::1"], what="IPv6 slice merged")
    kubeapi.apply(endpoint_slice("app", "db-v4", "db", ["10.244.0.2"]))
    await eventually(lambda: ips() == ["10.244.0.2", "fd00::1"], what="slice modified")
    kubeapi.apply(endpoint_slice("app", "db-v4", "db", []))  # the API sends `endpoints: null`
    await eventually(lambda: ips() == ["fd00::1"], what="slice emptied")
    kubeapi.delete("endpointslices", "app", "db-v6")
    await eventually(lambda: ips() == [], what="slice deleted")


async def test_namespace_added_deleted(kubeapi: KubeAPIServer, start_source) -> None:
    rs = await start_source()
    kubeapi.apply(namespace("team-a"))
    await eventually(lambda: rs.store.namespace_exists("team-a"), what="namespace added")
    kubeapi.apply(namespace("team-a"))  # MODIFIED (labels etc.): still there
    kubeapi.delete("namespaces", "", "team-a")
    await eventually(lambda: not rs.store.namespace_exists("team-a"), what="namespace deleted")


async def test_pod_added_modified_deleted(kubeapi: KubeAPIServer, start_source) -> None:
    rs = await start_source(pods=True)
    kubeapi.apply(pod("app", "web-0", "10.244.3.3"))
    await eventually(lambda: rs.store.pod_has_ip("app", "10.244.3.3"), what="pod added")
    kubeapi.apply(pod("app", "web-0", "10.244.3.4"))
    await eventually(lambda: rs.store.pod_has_ip("app", "10.244.3.4") and not rs.store.pod_has_ip("app", "10.244.3.3"),
                     what="pod IP changed")
    kubeapi.delete("pods", "app", "web-0")
    await eventually(lambda: not rs.store.pod_has_ip("app", "10.244.3.4"), what="pod deleted")


@pytest.mark.parametrize("resource", ["services", "endpointslices"])
async def test_every_event_advances_the_resource_version(kubeapi: KubeAPIServer, start_source, resource: str) -> None:
    """The version a resumed watch starts from is the newest one seen."""
    rs = await start_source()
    if resource == "services":
        obj = service("app", "x", "10.96.0.9")
    else:
        obj = endpoint_slice("app", "x-1", "x", ["10.1.1.1"])
    rv = kubeapi.apply(obj)
    await eventually(lambda: rs.state(resource).version == str(rv), what="version advanced")
    assert rs.state(resource).events == 1
