"""End to end: a real `clusterdns serve --kubeconfig` process answers what the API holds."""

from __future__ import annotations

from kubeapi import KubeAPIServer, endpoint_slice, namespace, pod, service

SVC = "{}.{}.svc.cluster.local."


async def test_each_kind_added_modified_deleted_shows_in_answers(kubeapi: KubeAPIServer, serve) -> None:
    kubeapi.apply(namespace("app"))
    kubeapi.apply(service("app", "web", "10.96.0.10"))
    dns = await serve()
    assert await dns.answer(SVC.format("web", "app")) == ("NOERROR", ["10.96.0.10"])

    # Service: added, modified, deleted
    kubeapi.apply(service("app", "api", "10.96.0.11"))
    await dns.wait_for(SVC.format("api", "app"), ("NOERROR", ["10.96.0.11"]))
    kubeapi.apply(service("app", "api", "10.96.0.12"))
    await dns.wait_for(SVC.format("api", "app"), ("NOERROR", ["10.96.0.12"]))
    kubeapi.delete("services", "app", "api")
    await dns.wait_for(SVC.format("api", "app"), ("NXDOMAIN", []))

    # EndpointSlice of a headless service: added, modified, deleted
    kubeapi.apply(service("app", "db", "None"))
    await dns.wait_for(SVC.format("db", "app"), ("NXDOMAIN", []))  # no ready endpoints yet
    kubeapi.apply(endpoint_slice("app", "db-1", "db", ["10.244.0.1", "10.244.0.2"]))
    await dns.wait_for(SVC.format("db", "app"), ("NOERROR", ["10.244.0.1", "10.244.0.2"]))
    kubeapi.apply(endpoint_slice("app", "db-1", "db", ["10.244.0.2", "10.244.0.3"]))
    await dns.wait_for(SVC.format("db", "app"), ("NOERROR", ["10.244.0.2", "10.244.0.3"]))
    kubeapi.apply(endpoint_slice("app", "db-2", "db", ["fd00::5"], address_type="IPv6"))
    await dns.wait_for(SVC.format("db", "app"), ("NOERROR", ["fd00::5"]), "AAAA")
    kubeapi.delete("endpointslices", "app", "db-1")
    await dns.wait_for(SVC.format("db", "app"), ("NOERROR", []))  # IPv6 only now: A is NODATA

    # Namespace: an empty namespace exists (NODATA at <ns>.svc), then is deleted (NXDOMAIN)
    kubeapi.apply(namespace("empty"))
    await dns.wait_for("empty.svc.cluster.local.", ("NOERROR", []))
    kubeapi.delete("namespaces", "", "empty")
    await dns.wait_for("empty.svc.cluster.local.", ("NXDOMAIN", []))


async def test_pods_verified_reads_pods_from_the_api(kubeapi: KubeAPIServer, serve) -> None:
    kubeapi.apply(namespace("app"))
    dns = await serve("--pods", "verified")
    name = "10-244-7-7.app.pod.cluster.local."
    assert await dns.answer(name) == ("NXDOMAIN", [])
    kubeapi.apply(pod("app", "web-0", "10.244.7.7"))
    await dns.wait_for(name, ("NOERROR", ["10.244.7.7"]))
    kubeapi.delete("pods", "app", "web-0")
    await dns.wait_for(name, ("NXDOMAIN", []))


async def test_ignore_empty_service_answers_nxdomain_without_ready_endpoints(kubeapi: KubeAPIServer, serve) -> None:
    kubeapi.apply(service("app", "idle", "10.96.0.30"))
    kubeapi.apply(endpoint_slice("app", "idle-1", "idle", ["10.244.0.9"], ready=False))
    plain = await serve()
    strict = await serve("--ignore-empty-service")
    assert await plain.answer(SVC.format("idle", "app")) == ("NOERROR", ["10.96.0.30"])
    assert await strict.answer(SVC.format("idle", "app")) == ("NXDOMAIN", [])
    kubeapi.apply(endpoint_slice("app", "idle-1", "idle", ["10.244.0.9"], ready=True))
    await strict.wait_for(SVC.format("idle", "app"), ("NOERROR", ["10.96.0.30"]))


async def test_namespace_and_label_flags_filter_answers(kubeapi: KubeAPIServer, serve) -> None:
    for ns in ("a", "b"):
        kubeapi.apply(service(ns, "pub", "10.96.0.40", labels={"dns": "yes"}))
        kubeapi.apply(service(ns, "priv", "10.96.0.41"))
    dns = await serve("--namespaces", "a", "--labels", "dns=yes")
    assert await dns.answer(SVC.format("pub", "a")) == ("NOERROR", ["10.96.0.40"])
    assert (await dns.answer(SVC.format("priv", "a")))[0] == "NXDOMAIN"
    assert (await dns.answer(SVC.format("pub", "b")))[0] == "NXDOMAIN"
