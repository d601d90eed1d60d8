"""End to end: a LoadBalancer's status, written by the API after the Service exists, reaches
the external zone of a running `clusterdns serve --kubeconfig --external-zone`."""

from __future__ import annotations

from kubeapi import KubeAPIServer, namespace, service

NAME = "web.app.example.com."


def with_ingress(ip: str) -> dict:
    svc = service("app", "web", "10.96.0.10", type="LoadBalancer")
    svc["status"] = {"loadBalancer": {"ingress": [{"ip": ip}]}}
    return svc


async def test_loadbalancer_status_change_shows_in_the_external_zone(kubeapi: KubeAPIServer, serve) -> None:
    kubeapi.apply(namespace("app"))
    kubeapi.apply(service("app", "web", "10.96.0.10", type="LoadBalancer"))  # no address yet
    dns = await serve("--external-zone", "example.com")
    assert await dns.answer(NAME) == ("NXDOMAIN", [])
    kubeapi.apply(with_ingress("203.0.113.10"))  # the cloud controller writes the status
    await dns.wait_for(NAME, ("NOERROR", ["203.0.113.10"]))
    kubeapi.apply(with_ingress("203.0.113.11"))
    await dns.wait_for(NAME, ("NOERROR", ["203.0.113.11"]))
    assert await dns.answer("web.app.svc.cluster.local.") == ("NOERROR", ["10.96.0.10"])
    kubeapi.delete("services", "app", "web")
    await dns.wait_for(NAME, ("NXDOMAIN", []))
