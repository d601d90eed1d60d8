"""The exact command line of k8s/deployment.yaml, run against the test API server.

Arguments are expanded from the ConfigMap the way the kubelet does ($(VAR) from envFrom),
so a flag renamed in the CLI but not in the manifest fails here, not in a cluster. The
process binds :53, :8080 and :8181 as the pod would: run inside `unshare -n` (own netns).
"""

from __future__ import annotations

import asyncio
import re
import signal
from pathlib import Path

import pytest
import yaml

from conftest import eventually
from kubeapi import KubeAPIServer, endpoint_slice, service

K8S = Path(__file__).resolve().parents[2] / "k8s"


def kubelet_args(container: dict, configmaps: dict[str, dict[str, str]]) -> list[str]:
    """Container args with $(VAR) expanded from envFrom ConfigMaps ($$ escapes, unknown kept)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(configmaps[source["configMapRef"]["name"]])
    for var in container.get("env", []):
        env[var["name"]] = var["value"]
    expand = lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0))  # noqa: E731
    return [re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)", expand, a) for a in container.get("args", [])]


def deployment_command() -> tuple[list[str], dict]:
    docs = [d for p in sorted(K8S.glob("*.yaml")) for d in yaml.safe_load_all(p.read_text()) if d]
    configmaps = {d["metadata"]["name"]: d["data"] for d in docs if d["kind"] == "ConfigMap"}
    (dep,) = [d for d in docs if d["kind"] == "Deployment"]
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    return kubelet_args(container, configmaps), container


async def test_deployment_command_line_serves_the_cluster(kubeapi: KubeAPIServer, serve, kubeconfig: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    args, container = deployment_command()
    assert not any("$(" in a for a in args), args
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
    assert dns.ports() == (ports[live["port"]], ports[ready["port"]])
    assert await dns.http(live["path"]) == (200, "OK")
    assert await dns.http(ready["path"]) == (200, "OK")

    # the lame duck from the ConfigMap: readiness drops, DNS still answers; a second signal ends it
    dns.signal(signal.SIGTERM)
    await eventually(lambda: dns.count("lame duck"), what="lame duck")
    assert (await dns.http(ready["path"]))[0] == 503
    assert await dns.answer("web.default.svc.cluster.local.") == ("NOERROR", ["10.96.0.10"])
    dns.signal(signal.SIGTERM)
    assert await asyncio.to_thread(dns.proc.wait_exit, 3) == 0


def test_kubelet_expansion_rules() -> None:
    """The helper above must expand like the kubelet, or the test above proves nothing."""
    c = {"envFrom": [{"configMapRef": {"name": "cm"}}], "env": [{"name": "B", "value": "2"}],
         "args": ["--a=$(A)", "--b=$(B)", "$$(A)", "$(MISSING)"]}
    assert kubelet_args(c, {"cm": {"A": "1"}}) == ["--a=1", "--b=2", "$(A)", "$(MISSING)"]
