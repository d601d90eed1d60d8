"""`--namespaces` keeps only those namespaces; `--labels` is sent to the API as labelSelector."""

from __future__ import annotations

from conftest import eventually
from kubeapi import KubeAPIServer, endpoint_slice, namespace, service


async def test_namespaces_filter_keeps_only_listed_namespaces(kubeapi: KubeAPIServer, start_source) -> None:
    for ns in ("a", "b", "c"):
        kubeapi.apply(namespace(ns))
        kubeapi.apply(service(ns, "web", "10.96.0.1"))
        kubeapi.apply(endpoint_slice(ns, "web-1", "web", ["10.244.0.1"]))
    rs = await start_source(namespaces=frozenset({"a", "b"}))
    assert sorted(rs.store.services) == [("a", "web"), ("b", "web")]
    assert sorted(rs.store.slices) == [("a", "web-1"), ("b", "web-1")]
    assert rs.store.namespace_exists("a") and not rs.store.namespace_exists("c")

    kubeapi.apply(service("c", "late", "10.96.0.2"))
    kubeapi.apply(service("b", "late", "10.96.0.3"))
    await eventually(lambda: rs.store.view("b", "late"), what="b/late")
    assert rs.store.view("c", "late") is None
    kubeapi.delete("services", "c", "web")  # a deletion outside the filter is harmless
    kubeapi.delete("services", "a", "web")
    await eventually(lambda: rs.store.view("a", "web") is None, what="a/web deleted")


async def test_label_selector_is_passed_to_the_api(kubeapi: KubeAPIServer, start_source) -> None:
    kubeapi.apply(service("app", "public", "10.96.0.1", labels={"expose": "dns"}))
    kubeapi.apply(service("app", "private", "10.96.0.2"))
    kubeapi.apply(endpoint_slice("app", "public-1", "public", ["10.244.0.1"], labels={"expose": "dns"}))
    kubeapi.apply(endpoint_slice("app", "private-1", "private", ["10.244.0.2"]))
    rs = await start_source(labels="expose=dns")

    assert list(rs.store.services) == [("app", "public")] and list(rs.store.slices) == [("app", "public-1")]
    sent = {(r.resource, r.type): r.params.get("labelSelector") for r in kubeapi.requests}
    assert sent[("services", "list")] == "expose=dns" and sent[("endpointslices", "list")] == "expose=dns"
    await eventually(lambda: ("services", "watch") in {(r.resource, r.type) for r in kubeapi.requests})
    sent = {(r.resource, r.type): r.params.get("labelSelector") for r in kubeapi.requests}
    assert sent[("services", "watch")] == "expose=dns"
    assert sent[("namespaces", "list")] is None  # CoreDNS `labels` does not apply to namespaces

    kubeapi.apply(service("app", "private", "10.96.0.2", labels={"expose": "dns"}))  # now selected
    await eventually(lambda: rs.store.view("app", "private"), what="newly selected service")
    kubeapi.apply(service("app", "private", "10.96.0.2"))  # deselected: the API says DELETED
    await eventually(lambda: rs.store.view("app", "private") is None, what="deselected service")
