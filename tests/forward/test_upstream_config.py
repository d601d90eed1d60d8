"""Where upstreams come from (resolv.conf, --stub, the kube-dns ConfigMap), the
node-cache config file and flags, and the node-local manifest."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from clusterdns.app.nodecache import build
from clusterdns.cli import build_parser
from clusterdns.forward.sources import load_kube_dns_configmap, parse_stub, resolv_conf_upstreams
from clusterdns.forward.upstream import UpstreamSpec
from clusterdns.options.declare import ConfigError
from clusterdns.settings import config
from clusterdns.settings.schema import NodeCacheConfig

ROOT = Path(__file__).resolve().parents[2]


def test_resolv_conf_nameservers_in_order(tmp_path: Path) -> None:
    """`forward . /etc/resolv.conf`: nameserver lines only, comments and options ignored."""
    f = tmp_path / "resolv.conf"
    f.write_text("# generated\nsearch a.example\nnameserver 10.0.0.2\n; x\n"
                 "nameserver fd00::53 # v6\noptions ndots:5\nnameserver bogus\n")
    assert resolv_conf_upstreams(f) == [UpstreamSpec("10.0.0.2"), UpstreamSpec("fd00::53")]


def test_stub_flag_syntax() -> None:
    assert parse_stub("Consul.Local=10.150.0.1,10.150.0.2:8600,[fd00::1]:53") == (
        "consul.local.", [UpstreamSpec("10.150.0.1"), UpstreamSpec("10.150.0.2", 8600),
                          UpstreamSpec("fd00::1", 53)])
    for bad in ("consul.local", "=10.0.0.1", "consul.local="):
        with pytest.raises(ValueError):
            parse_stub(bad)


CM = {"stubDomains": json.dumps({"acme.local": ["1.2.3.4"], "corp.example": ["10.0.0.9:5353"]}),
      "upstreamNameservers": json.dumps(["8.8.8.8", "8.8.4.4"])}


def _check(cfg: Any) -> None:
    assert cfg.stub_domains == {"acme.local.": [UpstreamSpec("1.2.3.4")],
                                "corp.example.": [UpstreamSpec("10.0.0.9", 5353)]}
    assert cfg.upstream_nameservers == [UpstreamSpec("8.8.8.8"), UpstreamSpec("8.8.4.4")]


def test_kube_dns_configmap_as_a_mounted_directory(tmp_path: Path) -> None:
    for key, value in CM.items():
        (tmp_path / key).write_text(value)
    _check(load_kube_dns_configmap(tmp_path))


def test_kube_dns_configmap_as_a_configmap_object_or_plain_yaml(tmp_path: Path) -> None:
    obj = tmp_path / "cm.yaml"
    obj.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "ConfigMap",
                                   "metadata": {"name": "kube-dns"}, "data": CM}))
    _check(load_kube_dns_configmap(obj))
    plain = tmp_path / "plain.yaml"
    plain.write_text("stubDomains:\n  acme.local: [1.2.3.4]\n  corp.example: ['10.0.0.9:5353']\n"
                     "upstreamNameservers: [8.8.8.8, 8.8.4.4]\n")
    _check(load_kube_dns_configmap(plain))
    empty = tmp_path / "empty"
    empty.mkdir()
    assert load_kube_dns_configmap(empty).stub_domains == {}


def test_kube_dns_configmap_errors_say_which_key(tmp_path: Path) -> None:
    (tmp_path / "stubDomains").write_text("{not json")
    with pytest.raises(ValueError, match="stubDomains is not valid JSON"):
        load_kube_dns_configmap(tmp_path)


def _args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["node-cache", *argv])


def test_node_cache_example_config_loads_and_builds() -> None:
    """Every example config in the repo loads (CoreDNS readme_test habit) and builds."""
    cfg = config.load(ROOT / "config" / "node-cache.yaml", "node-cache")
    assert cfg.listen == ["169.254.20.10:53"] and cfg.cache.cluster_denial_ttl == 5
    assert cfg.cache.serve_stale == 3600 and cfg.forward.max_concurrent == 1000
    cfg.upstreams = ["127.0.0.1:53"]
    zones = {z.zone: z for z in build(cfg).table.zones}
    assert set(zones) == {"cluster.local.", "in-addr.arpa.", "ip6.arpa.", "."}
    cluster = zones["cluster.local."]
    assert cluster.forwarder.upstreams[0].spec == UpstreamSpec("10.96.0.11", 53, force_tcp=True)
    assert (cluster.cache.max_ttl, cluster.cache.max_negative_ttl) == (30, 5)
    assert zones["."].forwarder.except_zones == (b"\x07cluster\x05local\x00",)


def test_flags_override_the_config_file_and_env_gives_the_cluster_dns(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("listen: [169.254.20.10:53]\nforward: {policy: sequential}\ncache: {prefetch: 3}\n")
    cfg = config.resolve("node-cache", _args("--config", str(f), "--listen", "127.0.0.1:5300", "--prefetch", "5",
                          "--stub", "consul.local=10.150.0.1"),
                    {"KUBE_DNS_UPSTREAM_SERVICE_HOST": "10.96.0.11",
                     "KUBE_DNS_UPSTREAM_SERVICE_PORT": "5353"})
    assert cfg.listen == ["127.0.0.1:5300"] and cfg.cache.prefetch == 5
    assert cfg.forward.policy == "sequential" and cfg.cluster_dns == "10.96.0.11:5353"
    assert cfg.stub_domains == {"consul.local": ["10.150.0.1"]}


def test_unknown_setting_is_an_error_naming_it(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("forward: {max_concurent: 5}\n")
    with pytest.raises(ConfigError, match="max_concurent"):
        config.load(f, "node-cache")


def test_missing_cluster_dns_is_an_error() -> None:
    cfg = NodeCacheConfig()
    cfg.upstreams = ["127.0.0.1"]
    with pytest.raises(ConfigError, match="--cluster-dns"):
        build(cfg)


def _docs() -> dict[str, dict[str, Any]]:
    docs = yaml.safe_load_all((ROOT / "k8s" / "node-local.yaml").read_text())
    return {d["kind"]: d for d in docs if d}


def test_node_local_manifest_is_valid_kubernetes() -> None:
    for doc in _docs().values():
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


def test_node_local_daemonset_matches_node_local_dns(tmp_path: Path) -> None:
    """hostNetwork, dnsPolicy Default, system-node-critical, tolerate all, 10% at a time,
    and the embedded config is a valid node-cache config."""
    docs = _docs()
    ds = docs["DaemonSet"]
    pod = ds["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True and pod["dnsPolicy"] == "Default"
    assert pod["priorityClassName"] == "system-node-critical"
    assert pod["tolerations"] == [{"operator": "Exists"}]
    assert ds["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"] == "10%"
    (c,) = pod["containers"]
    assert c["args"][0] == "node-cache"
    assert c["livenessProbe"]["httpGet"] == {"host": "169.254.20.10", "path": "/health", "port": 8080}
    svc = docs["Service"]
    assert svc["metadata"]["name"] == "kube-dns-upstream" and svc["spec"]["selector"] == {"k8s-app": "kube-dns"}
    cm = docs["ConfigMap"]
    path = tmp_path / "node-cache.yaml"
    path.write_text(cm["data"]["node-cache.yaml"])
    cfg = config.load(path, "node-cache")
    assert cfg.listen == ["169.254.20.10:53"] and cfg.kube_dns_configmap == "/etc/kube-dns"
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    assert "/etc/kube-dns" in mounts and "/etc/clusterdns" in mounts
