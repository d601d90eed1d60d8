"""The k8s/ manifests: schema-valid for a current Kubernetes, and what operators expect
of a cluster DNS Deployment (operators.md §1.2)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "k8s"
VERSION = kubernetes_validate.latest_version()
OLDEST = "1.29.0"  # EndpointSlice v1, policy/v1 PDB and seccompProfile are all GA before this


def _docs() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                out.append((f"{path.name}:{doc['kind']}/{doc['metadata']['name']}", doc))
    return out


DOCS = _docs()


def _one(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for _, d in DOCS if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"want exactly one {kind} {name or ''} in k8s/, found {len(found)}"
    return found[0]


def test_every_kind_is_there() -> None:
    """The cluster server's set (node-local.yaml, the node cache, is checked on its own)."""
    kinds = sorted(d["kind"] for label, d in DOCS if not label.startswith("node-local.yaml:"))
    assert kinds == sorted(["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "ConfigMap", "Deployment",
                            "Service", "PodDisruptionBudget"])


@pytest.mark.parametrize("version", [VERSION, OLDEST])
@pytest.mark.parametrize("label, doc", DOCS, ids=[label for label, _ in DOCS])
def test_manifest_is_valid_for_kubernetes(label: str, doc: dict[str, Any], version: str) -> None:
    """Strict: an unknown or misspelt field fails, as `kubectl apply --validate=strict` would."""
    kubernetes_validate.validate(doc, version, strict=True)


def test_validation_catches_a_misspelt_field() -> None:
    """Guard for the test above: the validator really rejects bad manifests."""
    bad = yaml.safe_load(yaml.safe_dump(_one("Deployment")))
    bad["spec"]["template"]["spec"]["dnsPolicyy"] = "Default"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, VERSION, strict=True)


def test_deployment_is_a_cluster_dns_deployment() -> None:
    dep = _one("Deployment")
    spec = dep["spec"]
    pod = spec["template"]["spec"]
    (c,) = pod["containers"]
    assert dep["metadata"]["namespace"] == "kube-system" and spec["replicas"] == 2
    assert spec["template"]["metadata"]["labels"]["k8s-app"] == "kube-dns"
    assert pod["priorityClassName"] == "system-cluster-critical"
    assert pod["dnsPolicy"] == "Default"
    assert pod["serviceAccountName"] == _one("ServiceAccount")["metadata"]["name"]
    term = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"]["matchExpressions"][0]["values"] == ["kube-dns"]

    ports = {p["name"]: (p["containerPort"], p["protocol"]) for p in c["ports"]}
    assert ports["dns"] == (53, "UDP") and ports["dns-tcp"] == (53, "TCP") and ports["metrics"][0] == 9153
    live, ready = c["livenessProbe"]["httpGet"], c["readinessProbe"]["httpGet"]
    assert (live["path"], ports[live["port"]][0]) == ("/health", 8080)
    assert (ready["path"], ports[ready["port"]][0]) == ("/ready", 8181)
    # probes and metrics bound to the pod IP (downward API), which is where the kubelet probes
    # (no `host:` in the probes) and Prometheus scrapes; not to every address
    assert {"--health=${POD_IP}:8080", "--ready=${POD_IP}:8181", "--metrics=${POD_IP}:9153"} <= set(c["args"])
    assert "host" not in live and "host" not in ready
    assert _pod_ip_env(c) == "POD_IP"

    sc = c["securityContext"]
    assert sc["capabilities"] == {"add": ["NET_BIND_SERVICE"], "drop": ["ALL"]}
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    res = c["resources"]
    assert res["requests"] == {"cpu": "100m", "memory": "70Mi"} and "memory" in res["limits"]


def _pod_ip_env(container: dict[str, Any]) -> str:
    """The one env var the container gets from the downward API's status.podIP."""
    (name,) = [e["name"] for e in container.get("env", [])
               if e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "status.podIP"]
    return name


def test_endpoints_bind_only_to_variables_the_pod_sets() -> None:
    """`${VAR}` in a bind address is read by clusterdns at start-up: unset, it stops the pod."""
    for kind, name in (("Deployment", None), ("DaemonSet", "node-local-dns")):
        c = _one(kind, name)["spec"]["template"]["spec"]["containers"][0]
        used = {v for arg in c["args"] for v in re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", arg)}
        if kind == "DaemonSet":
            text = _one("ConfigMap", "node-local-dns")["data"]["node-cache.yaml"]
            used |= set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", text))
        assert used == {_pod_ip_env(c)}, (kind, used)


def test_node_cache_endpoints_are_not_on_every_address() -> None:
    """The DaemonSet runs in the node's network: /health and /ready stay on the link-local
    address the kubelet probes, /metrics is on the node's IP (POD_IP) where Prometheus scrapes."""
    from clusterdns.settings import config as C

    ds = _one("DaemonSet", "node-local-dns")
    pod = ds["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert pod["hostNetwork"] is True and _pod_ip_env(c) == "POD_IP"
    cfg = C.parse(yaml.safe_load(_one("ConfigMap", "node-local-dns")["data"]["node-cache.yaml"]), "node-cache")
    assert cfg.health == "169.254.20.10:8080" and cfg.metrics == "${POD_IP}:9253"
    probe = c["livenessProbe"]["httpGet"]
    assert (probe["host"], probe["port"], probe["path"]) == ("169.254.20.10", 8080, "/health")
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    annotations = ds["spec"]["template"]["metadata"]["annotations"]
    assert ports["metrics"] == int(annotations["prometheus.io/port"]) == 9253


def test_args_only_use_variables_the_configmap_defines() -> None:
    """$(VAR) that the ConfigMap lacks is passed literally by the kubelet: a silent bug."""
    c = _one("Deployment")["spec"]["template"]["spec"]["containers"][0]
    cm = _one("ConfigMap", c["envFrom"][0]["configMapRef"]["name"])
    used = {v for arg in c["args"] for v in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", arg)}
    assert used and used <= set(cm["data"]), used - set(cm["data"])
    assert cm["metadata"]["namespace"] == "kube-system"


def test_kube_dns_service() -> None:
    svc = _one("Service", "kube-dns")
    assert svc["metadata"]["namespace"] == "kube-system" and svc["spec"]["clusterIP"] == "10.96.0.10"
    assert svc["spec"]["selector"] == {"k8s-app": "kube-dns"}
    ports = {p["name"]: (p["port"], p["protocol"]) for p in svc["spec"]["ports"]}
    assert ports == {"dns": (53, "UDP"), "dns-tcp": (53, "TCP"), "metrics": (9153, "TCP")}
    assert svc["metadata"]["annotations"] == {"prometheus.io/port": "9153", "prometheus.io/scrape": "true"}


def test_rbac_is_read_only_list_and_watch() -> None:
    role = _one("ClusterRole")
    granted = {(g, r): sorted(rule["verbs"]) for rule in role["rules"]
               for g in rule["apiGroups"] for r in rule["resources"]}
    assert granted == {("", "services"): ["list", "watch"], ("", "namespaces"): ["list", "watch"],
                       ("", "pods"): ["list", "watch"], ("discovery.k8s.io", "endpointslices"): ["list", "watch"]}
    binding = _one("ClusterRoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "clusterdns", "namespace": "kube-system"}]


def test_pdb_keeps_one_replica() -> None:
    pdb = _one("PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1 and pdb["spec"]["selector"]["matchLabels"] == {"k8s-app": "kube-dns"}


def test_dockerfile_runs_clusterdns_as_non_root() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim$", text, re.M)
    assert re.search(r"^RUN pip install \.", text, re.M)
    user = re.search(r"^USER (\d+)", text, re.M)
    assert user and int(user.group(1)) != 0
    assert re.search(r'^ENTRYPOINT \["clusterdns"\]$', text, re.M)
    image_user = _one("Deployment")["spec"]["template"]["spec"]["securityContext"]["runAsUser"]
    assert image_user == int(user.group(1))
