"""The exact command line of k8s/deployment.yaml, run against the test API server.

Arguments are expanded from the ConfigMap the way the kubelet does ($(VAR) from envFrom),
so a flag renamed in the CLI but not in the manifest fails here, not in a cluster. The
process binds :53, and :8080, :8181 and :9153 on the pod IP (POD_IP from the downward API,
127.0.0.2 here) as the pod would: run inside `unshare -n` (own netns).
"""

from __future__ import annotations

import asyncio
import re
import signal
from pathlib import Path

import aiohttp
import pytest
import yaml

from conftest import eventually
from kubeapi import KubeAPIServer, endpoint_slice, service

K8S = Path(__file__).resolve().parents[2] / "k8s"


POD_IP = "127.0.0.2"  # loopback holds all of 127/8: an address that is not 127.0.0.1


def container_env(container: dict, configmaps: dict[str, dict[str, str]],
                  pod_fields: dict[str, str] | None = None) -> dict[str, str]:
    """The container's environment as the kubelet builds it: envFrom ConfigMaps, then `env`
    (a value, or a downward-API fieldRef looked up in `pod_fields`)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(configmaps[source["configMapRef"]["name"]])
    for var in container.get("env", []):
        if "valueFrom" in var:
            env[var["name"]] = (pod_fields or {})[var["valueFrom"]["fieldRef"]["fieldPath"]]
        else:
            env[var["name"]] = var["value"]
    return env


def kubelet_args(container: dict, configmaps: dict[str, dict[str, str]],
                 pod_fields: dict[str, str] | None = None) -> list[str]:
    """Container args with $(VAR) expanded from the container's env ($$ escapes, unknown kept)."""
    env = container_env(container, configmaps, pod_fields)
    expand = lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0))  # noqa: E731
    return [re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)", expand, a) for a in container.get("args", [])]


def deployment_command() -> tuple[list[str], dict, dict[str, str]]:
    """(args, container, environment) of the Deployment's pod, whose IP is POD_IP."""
    docs = [d for p in sorted(K8S.glob("*.yaml")) for d in yaml.safe_load_all(p.read_text()) if d]
    configmaps = {d["metadata"]["name"]: d["data"] for d in docs if d["kind"] == "ConfigMap"}
    (dep,) = [d for d in docs if d["kind"] == "Deployment"]
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    fields = {"status.podIP": POD_IP}
    return kubelet_args(container, configmaps, fields), container, container_env(container, configmaps, fields)


async def http_get(host: str, port: int, path: str) -> tuple[int, str]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as s, \
            s.get(f"http://{host}:{port}{path}") as resp:
        return resp.status, await resp.text()


async def refused(host: str, port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection(host, port)
    except ConnectionRefusedError:
        return True
    writer.close()
    return False


async def test_deployment_command_line_serves_the_cluster(kubeapi: KubeAPIServer, serve, kubeconfig: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    args, container, env = deployment_command()
    assert not any("$(" in a for a in args), args
    for name, value in env.items():  # the kubelet's environment, POD_IP included
        monkeypatch.setenv(name, value)
    kubeapi.apply(service("default", "web", "10.96.0.10"))
    kubeapi.apply(service("default", "db", "None"))
    kubeapi.apply(endpoint_slice("default", "db-1", "db", ["10.244.0.5"]))
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))  # stands in for the in-cluster account

    dns = await serve(*args, base=False)
    assert dns.dns_port == 53
    assert await dns.answer("web.default.svc.cluster.local.") == ("NOERROR", ["10.96.0.10"])
    r = await dns.query("db.default.svc.cluster.local.", tcp=True)
    assert r.answer[0].ttl == 30 and r.answer[0][0].to_text() == "10.244.0.5"  # ttl from the ConfigMap

    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    live, ready = container["livenessProbe"]["httpGet"], container["readinessProbe"]["httpGet"]
    assert "host" not in live and "host" not in ready  # so the kubelet probes the pod IP
    assert dns.ports() == (ports[live["port"]], ports[ready["port"]])
    assert await http_get(POD_IP, ports[live["port"]], live["path"]) == (200, "OK")
    assert await http_get(POD_IP, ports[ready["port"]], ready["path"]) == (200, "OK")
    status, body = await http_get(POD_IP, ports["metrics"], "/metrics")
    assert status == 200 and "coredns_dns_requests_total" in body
    # on the pod IP only: nothing on another address (127.0.0.1 is loopback too)
    for name in (live["port"], ready["port"], "metrics"):
        assert await refused("127.0.0.1", ports[name]), f"{name} answers on 127.0.0.1"

    # the lame duck from the ConfigMap: readiness drops, DNS still answers; a second signal ends it
    dns.signal(signal.SIGTERM)
    await eventually(lambda: dns.count("lame duck"), what="lame duck")
    assert (await http_get(POD_IP, ports[ready["port"]], ready["path"]))[0] == 503
    assert await dns.answer("web.default.svc.cluster.local.") == ("NOERROR", ["10.96.0.10"])
    dns.signal(signal.SIGTERM)
    assert await asyncio.to_thread(dns.proc.wait_exit, 3) == 0


def test_kubelet_expansion_rules() -> None:
    """The helper above must expand like the kubelet, or the test above proves nothing."""
    c = {"envFrom": [{"configMapRef": {"name": "cm"}}],
         "env": [{"name": "B", "value": "2"}, {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
         "args": ["--a=$(A)", "--b=$(B)", "$$(A)", "$(MISSING)", "--ip=$(IP)", "--h=${IP}:1"]}
    fields = {"status.podIP": "10.0.0.7"}
    assert kubelet_args(c, {"cm": {"A": "1"}}, fields) == ["--a=1", "--b=2", "$(A)", "$(MISSING)", "--ip=10.0.0.7",
                                                           "--h=${IP}:1"]  # ${} is clusterdns's, not the kubelet's
    assert container_env(c, {"cm": {"A": "1"}}, fields) == {"A": "1", "B": "2", "IP": "10.0.0.7"}
