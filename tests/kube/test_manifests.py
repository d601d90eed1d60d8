"""Manifests from disk: YAML errors stop start-up with file and line; one broken object
is skipped with a warning naming file, kind, namespace/name and field."""

from __future__ import annotations

import re
from pathlib import Path

import dns.rcode
import pytest

from clusterdns.kube.manifests import ManifestError, load_manifests
from clusterdns.kube.objects import Service
from helpers import ROOT, ServerProcess, query

DATA = ROOT / "tests" / "data"


def test_not_yaml_stops_serve_with_file_and_line() -> None:
    srv = ServerProcess("serve", "--manifests", str(DATA / "not-yaml.yaml.txt"), "--listen", "127.0.0.1:0")
    with pytest.raises(RuntimeError):
        srv.start()
    assert srv.wait_exit() == 1
    assert re.search(r"not-yaml\.yaml\.txt:6:1: not valid YAML", srv.output())


def test_broken_objects_are_skipped_with_a_precise_warning_and_the_rest_served() -> None:
    with ServerProcess("serve", "--manifests", str(DATA / "broken.yaml"), "--listen", "127.0.0.1:0") as srv:
        r = query(srv, "survivor.team.svc.cluster.local.", "A")
        assert r.answer[0][0].address == "10.96.60.3"
        assert query(srv, "badport.team.svc.cluster.local.", "A").rcode() == dns.rcode.NXDOMAIN
        out = srv.output()
    assert "broken.yaml: skipped Service team/<unnamed>: field metadata.name" in out
    assert "broken.yaml: skipped Service team/badport: field spec.ports[0].port: not a number: 'eighty'" in out


def test_kind_list_multidoc_and_folders_all_load(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.yaml").write_text(
        "apiVersion: v1\nkind: Service\nmetadata: {name: one, namespace: x}\nspec: {clusterIP: 10.0.0.1}\n"
        "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: ignored}\n")
    (tmp_path / "sub" / "b.yml").write_text(
        "apiVersion: v1\nkind: ServiceList\nitems:\n- metadata: {name: two, namespace: x}\n  spec: {clusterIP: 10.0.0.2}\n")
    (tmp_path / "c.json").write_text(
        '{"apiVersion": "v1", "kind": "List", "items": [{"apiVersion": "v1", "kind": "Service",'
        ' "metadata": {"name": "three", "namespace": "x"}, "spec": {"clusterIP": "10.0.0.3"}}]}')
    objs, skipped = load_manifests([str(tmp_path)])
    assert sorted(o.name for o in objs if isinstance(o, Service)) == ["one", "three", "two"]
    assert skipped == 0


def test_missing_path_is_a_clear_error() -> None:
    with pytest.raises(ManifestError, match="no such file"):
        load_manifests(["/nonexistent/cluster.yaml"])
