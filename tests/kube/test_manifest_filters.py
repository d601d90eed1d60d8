"""`--namespaces` and `--labels` filter manifests exactly as they filter the API source.

The selector is parsed and matched here as the API server does it for `labelSelector`
(Services and EndpointSlices); the namespace filter drops every kind outside the list,
Namespace objects by their own name (kube/watch.py `KubeSource._wanted`). The last test
feeds the same objects to both sources and compares the answers name by name.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from clusterdns.kube import manifests
from clusterdns.kube.objects import Endpoints, EndpointSlice, Namespace, Pod, Service
from clusterdns.kube.selector import SelectorError, parse_selector
from clusterdns.kube.watch import ENDPOINTSLICES, NAMESPACES, PODS, SERVICES
from conftest import ClusterDNS
from helpers import ServerProcess
from kubeapi import KubeAPIServer, endpoint_slice, namespace, pod, service

SVC = "{}.{}.svc.cluster.local."


# ------------------------------------------------------------------ the selector
@pytest.mark.parametrize("text, labels, expected", [
    ("app=web", {"app": "web"}, True),
    ("app=web", {"app": "api"}, False),
    ("app=web", {}, False),
    ("app==web", {"app": "web"}, True),
    ("app==web", {"app": "api"}, False),
    ("app!=web", {"app": "api"}, True),
    ("app!=web", {"app": "web"}, False),
    ("app!=web", {}, True),  # != also selects objects without the label
    ("app=", {"app": ""}, True),
    ("app=", {}, False),
    (" app = web ", {"app": "web"}, True),
    ("example.com/tier=db", {"example.com/tier": "db"}, True),
    ("example.com/tier=db", {"tier": "db"}, False),
])
def test_equality_requirements_match_like_the_api_server(text: str, labels: dict[str, str], expected: bool) -> None:
    assert parse_selector(text).matches(labels) is expected


@pytest.mark.parametrize("text, labels, expected", [
    ("tier in (web,api)", {"tier": "api"}, True),
    ("tier in (web, api)", {"tier": "db"}, False),
    ("tier in (web,api)", {}, False),
    ("tier notin (web,api)", {"tier": "db"}, True),
    ("tier notin (web,api)", {"tier": "web"}, False),
    ("tier notin (web,api)", {}, True),  # notin also selects objects without the label
    ("tier in(web)", {"tier": "web"}, True),
    ("tier in (web,)", {"tier": ""}, True),  # a trailing comma adds the empty value
])
def test_set_requirements_match_like_the_api_server(text: str, labels: dict[str, str], expected: bool) -> None:
    assert parse_selector(text).matches(labels) is expected


@pytest.mark.parametrize("text, labels, expected", [
    ("canary", {"canary": ""}, True),
    ("canary", {"other": "x"}, False),
    ("!canary", {"other": "x"}, True),
    ("!canary", {"canary": "true"}, False),
    ("replicas>2", {"replicas": "3"}, True),
    ("replicas>2", {"replicas": "2"}, False),
    ("replicas<2", {"replicas": "1"}, True),
    ("replicas>2", {"replicas": "many"}, False),  # not an integer: never compares
    ("replicas>2", {}, False),
])
def test_existence_and_comparison_requirements(text: str, labels: dict[str, str], expected: bool) -> None:
    assert parse_selector(text).matches(labels) is expected


def test_comma_joins_requirements_with_and() -> None:
    sel = parse_selector("app=web,tier notin (test),!canary")
    assert sel.matches({"app": "web", "tier": "prod"})
    assert not sel.matches({"app": "web", "tier": "test"})
    assert not sel.matches({"app": "web", "canary": "1"})
    assert not sel.matches({"tier": "prod"})
    assert [r.op for r in sel.requirements] == ["=", "notin", "!"]


def test_empty_selector_selects_everything() -> None:
    assert parse_selector("").matches({}) and parse_selector("  ").matches({"a": "b"})


@pytest.mark.parametrize("text, problem", [
    ("app in ()", "'app' in (): the set of values is empty"),
    ("app in web", "expected '(' after 'app' in, found 'web'"),
    ("app in (web", "expected a value, ',' or ')', found the end"),
    ("app in (web api)", "expected a value, ',' or ')', found 'api'"),
    ("app web", "after the key 'app': expected one of in, notin, =, ==, !=, >, <, found 'web'"),
    ("=web", "expected a key at the start, found '='"),
    ("app=web,", "expected a requirement after the last ','"),
    ("app=web,,tier", "expected a key after ',', found ','"),
    ("app=web=x", "expected ',' between requirements, found '='"),
    ("!", "expected a key after '!', found the end"),
    ("!app=web", "expected ',' between requirements, found '='"),
    ("app=(", "expected a value after 'app' =, found '('"),
    ("Example.com/app=web", "key 'Example.com/app': the prefix before '/' must be a lowercase DNS subdomain"),
    ("a/b/c", "key 'a/b/c': at most one '/'"),
    ("app-=web", "key 'app-': the name must be 1-63 characters"),
    ("k" * 64, "the name must be 1-63 characters"),
    ("app=-web", "value '-web' of 'app': a label value is at most 63 characters"),
    ("app=" + "v" * 64, "a label value is at most 63 characters"),
    ("replicas>two", "'replicas' > 'two': > compares with an integer"),
])
def test_bad_selectors_raise_a_value_error_naming_the_problem(text: str, problem: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_selector(text)
    assert isinstance(info.value, SelectorError)
    assert problem in info.value.problem
    assert str(info.value) == f"label selector {text!r}: {info.value.problem}"


# ------------------------------------------------------------------ load_manifests
def _write(path: Path, objs: list[dict[str, Any]]) -> Path:
    path.write_text(yaml.safe_dump_all(objs, sort_keys=False))
    return path


def _endpoints(ns: str, name: str, ip: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Endpoints",
            "metadata": {"namespace": ns, "name": name, "labels": labels or {}},
            "subsets": [{"addresses": [{"ip": ip}], "ports": [{"name": "http", "port": 80}]}]}


def _refs(objs: list[Any]) -> set[tuple[str, str, str]]:
    return {(type(o).__name__, "" if isinstance(o, Namespace) else o.namespace, o.name) for o in objs}


def test_selectable_kinds_are_the_api_sources_selectable_resources() -> None:
    api = (SERVICES, ENDPOINTSLICES, NAMESPACES, PODS)
    assert {r.kind for r in api if r.selectable} <= manifests.SELECTABLE_KINDS
    assert not {r.kind for r in api if not r.selectable} & manifests.SELECTABLE_KINDS
    assert "Endpoints" in manifests.SELECTABLE_KINDS  # what the API source reads as EndpointSlices


def test_labels_filter_services_and_endpoints_but_not_pods_or_namespaces(tmp_path: Path) -> None:
    f = _write(tmp_path / "c.yaml", [
        namespace("app"),
        service("app", "web", "10.96.0.1", labels={"expose": "dns"}),
        service("app", "hidden", "10.96.0.2"),
        endpoint_slice("app", "web-1", "web", ["10.244.0.1"], labels={"expose": "dns"}),
        endpoint_slice("app", "hidden-1", "hidden", ["10.244.0.2"]),
        _endpoints("app", "web", "10.244.0.1", labels={"expose": "dns"}),
        _endpoints("app", "hidden", "10.244.0.2"),
        pod("app", "p", "10.244.0.3"),
    ])
    objs, skipped = manifests.load_manifests([str(f)], labels="expose=dns")
    assert skipped == 0
    assert _refs(objs) == {("Namespace", "", "app"), ("Service", "app", "web"), ("EndpointSlice", "app", "web-1"),
                           ("Endpoints", "app", "web"), ("Pod", "app", "p")}
    everything, _ = manifests.load_manifests([str(f)])
    assert len(everything) == 8


def test_namespaces_filter_every_kind_and_namespace_objects_by_name(tmp_path: Path) -> None:
    f = _write(tmp_path / "c.yaml", [
        namespace(ns) for ns in ("a", "b", "c")] + [
        obj for ns in ("a", "c", "default") for obj in (
            service(ns, "web", "10.96.0.1"), endpoint_slice(ns, "web-1", "web", ["10.244.0.1"]),
            _endpoints(ns, "web", "10.244.0.1"), pod(ns, "p", "10.244.0.3"))
    ] + [{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "bare"}, "spec": {"clusterIP": "10.96.0.9"}}])
    objs, _ = manifests.load_manifests([str(f)], namespaces=("a", "b"))
    assert {(t, ns) for t, ns, _ in _refs(objs)} == {
        ("Namespace", ""), ("Service", "a"), ("EndpointSlice", "a"), ("Endpoints", "a"), ("Pod", "a")}
    assert {o.name for o in objs if isinstance(o, Namespace)} == {"a", "b"}  # c's Namespace is dropped too
    objs, _ = manifests.load_manifests([str(f)], namespaces=("default",))
    assert ("Service", "default", "bare") in _refs(objs)  # no metadata.namespace means default, as parsed
    assert all(isinstance(o, (Service, EndpointSlice, Endpoints, Pod)) for o in objs)


def test_broken_labels_are_a_skipped_object_only_when_a_selector_reads_them(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    f = _write(tmp_path / "c.yaml", [
        service("app", "intlabel", "10.96.0.1", labels={"expose": "dns", "version": 2}),  # type: ignore[dict-item]
        {**service("app", "listlabels", "10.96.0.2"), "metadata": {"namespace": "app", "name": "listlabels",
                                                                   "labels": ["expose"]}},
        service("app", "fine", "10.96.0.3", labels={"expose": "dns"}),
    ])
    with caplog.at_level(logging.WARNING, "clusterdns"):
        objs, skipped = manifests.load_manifests([str(f)], labels="expose=dns")
    assert _refs(objs) == {("Service", "app", "fine")} and skipped == 2
    assert "skipped Service app/intlabel: field metadata.labels[version]: not a string: 2" in caplog.text
    assert "skipped Service app/listlabels: field metadata.labels: not a mapping" in caplog.text
    assert len(manifests.load_manifests([str(f)])[0]) == 3


def test_malformed_objects_count_as_the_api_source_counts_them(tmp_path: Path) -> None:
    """Parsed before the namespace check (counted), but never sent by a label-filtering API server."""
    bad_port = [{"name": "http", "port": "eighty", "protocol": "TCP"}]
    f = _write(tmp_path / "c.yaml", [
        service("elsewhere", "broken", "10.96.0.1", ports=bad_port, labels={"expose": "dns"}),
        service("app", "unselected", "10.96.0.2", ports=bad_port),
    ])
    assert manifests.load_manifests([str(f)], namespaces=("app",), labels="expose=dns") == ([], 1)


def test_bad_selector_stops_load_manifests(tmp_path: Path) -> None:
    f = _write(tmp_path / "c.yaml", [service("app", "web")])
    with pytest.raises(ValueError, match=r"label selector 'app in \(\)': 'app' in \(\): the set of values is empty"):
        manifests.load_manifests([str(f)], labels="app in ()")


# ------------------------------------------------------------------ a real `clusterdns serve --manifests`
def _cluster() -> list[dict[str, Any]]:
    """Kept and filtered objects of every kind for `--namespaces a,b,d,e --labels expose=dns,tier!=test`."""
    dns_ = {"expose": "dns"}
    return [
        namespace("a"), namespace("c"), namespace("d"),  # b and e have no Namespace object
        service("a", "web", "10.96.0.1", labels=dns_),
        service("a", "hidden", "10.96.0.2"),
        service("a", "testing", "10.96.0.3", labels={**dns_, "tier": "test"}),
        service("a", "prod", "10.96.0.4", labels={**dns_, "tier": "prod"}),
        service("a", "db", "None", labels=dns_),
        endpoint_slice("a", "db-1", "db", ["10.244.0.1", "10.244.0.2"], labels=dns_),
        endpoint_slice("a", "db-2", "db", ["10.244.0.9"]),  # unlabelled slice of a selected service
        service("a", "ext", None, labels=dns_, type="ExternalName", externalName="db.example.com"),
        service("b", "api", "10.96.1.1", labels=dns_),
        service("c", "web", "10.96.2.1", labels=dns_),  # namespace not listed
        endpoint_slice("c", "web-1", "web", ["10.244.2.1"], labels=dns_),
        service("d", "hidden", "10.96.3.1"),
        service("e", "hidden", "10.96.4.1"),
        pod("a", "p1", "10.244.1.1"),
        pod("c", "p2", "10.244.1.2"),
    ]


FILTERS = ("--namespaces", "a,b,d,e", "--labels", "expose=dns,tier!=test", "--pods", "verified")

#: name, type -> what the filters leave (the API source answers the same, see the last test)
EXPECTED: dict[tuple[str, str], tuple[str, list[str]]] = {
    (SVC.format("web", "a"), "A"): ("NOERROR", ["10.96.0.1"]),
    (SVC.format("prod", "a"), "A"): ("NOERROR", ["10.96.0.4"]),
    (SVC.format("hidden", "a"), "A"): ("NXDOMAIN", []),
    (SVC.format("testing", "a"), "A"): ("NXDOMAIN", []),
    (SVC.format("db", "a"), "A"): ("NOERROR", ["10.244.0.1", "10.244.0.2"]),
    (SVC.format("ext", "a"), "CNAME"): ("NOERROR", ["db.example.com."]),
    ("_http._tcp." + SVC.format("web", "a"), "SRV"): ("NOERROR", ["0 100 80 web.a.svc.cluster.local."]),
    (SVC.format("api", "b"), "A"): ("NOERROR", ["10.96.1.1"]),
    (SVC.format("web", "c"), "A"): ("NXDOMAIN", []),
    (SVC.format("hidden", "d"), "A"): ("NXDOMAIN", []),
    ("a.svc.cluster.local.", "A"): ("NOERROR", []),
    ("b.svc.cluster.local.", "A"): ("NOERROR", []),  # implied by its kept Service
    ("c.svc.cluster.local.", "A"): ("NXDOMAIN", []),  # unlisted: does not exist
    ("d.svc.cluster.local.", "A"): ("NOERROR", []),  # its Namespace object is kept
    ("e.svc.cluster.local.", "A"): ("NXDOMAIN", []),  # nothing kept implies it
    ("1.0.96.10.in-addr.arpa.", "PTR"): ("NOERROR", ["web.a.svc.cluster.local."]),
    ("2.0.96.10.in-addr.arpa.", "PTR"): ("NXDOMAIN", []),
    ("1.2.96.10.in-addr.arpa.", "PTR"): ("NXDOMAIN", []),
    ("10-244-1-1.a.pod.cluster.local.", "A"): ("NOERROR", ["10.244.1.1"]),  # Pods ignore --labels
    ("10-244-1-2.c.pod.cluster.local.", "A"): ("NXDOMAIN", []),
}


@pytest.fixture
async def serve_manifests(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[ClusterDNS]]]:
    """`await serve_manifests(objects, *args)`: clusterdns serve --manifests <objects> on loopback."""
    started: list[ServerProcess] = []

    async def start(objs: list[dict[str, Any]], *args: str) -> ClusterDNS:
        f = _write(tmp_path / f"cluster-{len(started)}.yaml", objs)
        proc = ServerProcess("serve", "--manifests", str(f), "--listen", "127.0.0.1:0", *args)
        started.append(proc)
        await asyncio.to_thread(proc.start)
        return ClusterDNS(proc)

    yield start
    for proc in started:
        await asyncio.to_thread(proc.stop)


async def _answers(dns: ClusterDNS, names: list[tuple[str, str]]) -> dict[tuple[str, str], tuple[str, list[str]]]:
    return {(name, rdtype): await dns.answer(name, rdtype) for name, rdtype in names}


async def test_serve_manifests_keeps_only_listed_namespaces_and_selected_services(serve_manifests) -> None:
    dns = await serve_manifests(_cluster(), *FILTERS)
    assert await _answers(dns, list(EXPECTED)) == EXPECTED


async def test_serve_manifests_without_filters_answers_everything(serve_manifests) -> None:
    dns = await serve_manifests(_cluster(), "--pods", "verified")
    for name in (SVC.format("hidden", "a"), SVC.format("web", "c"), SVC.format("hidden", "e"),
                 "10-244-1-2.c.pod.cluster.local."):
        rcode, rdata = await dns.answer(name)
        assert rcode == "NOERROR" and rdata, name


async def test_serve_manifests_takes_set_based_selectors(serve_manifests) -> None:
    objs = [service("a", name, f"10.96.0.{i}", labels=labels) for i, (name, labels) in enumerate([
        ("web", {"tier": "web"}), ("api", {"tier": "api"}), ("db", {"tier": "db"}),
        ("canary", {"tier": "web", "canary": "yes"}), ("bare", {})], start=1)]
    dns = await serve_manifests(objs, "--labels", "tier in (web, api),!canary")
    got = {name: (await dns.answer(SVC.format(name, "a")))[0] for name in ("web", "api", "db", "canary", "bare")}
    assert got == {"web": "NOERROR", "api": "NOERROR", "db": "NXDOMAIN", "canary": "NXDOMAIN", "bare": "NXDOMAIN"}


async def test_filters_from_the_config_file_apply_to_manifests(serve_manifests, tmp_path: Path) -> None:
    cfg = tmp_path / "clusterdns.yaml"
    cfg.write_text("namespaces: [a, b, d, e]\nlabels: 'expose=dns,tier!=test'\npods: verified\n")
    dns = await serve_manifests(_cluster(), "--config", str(cfg))
    assert await _answers(dns, list(EXPECTED)) == EXPECTED


def test_bad_selector_stops_serve_with_the_problem(tmp_path: Path) -> None:
    f = _write(tmp_path / "c.yaml", [service("a", "web")])
    srv = ServerProcess("serve", "--manifests", str(f), "--listen", "127.0.0.1:0", "--labels", "tier in (web")
    with pytest.raises(RuntimeError):
        srv.start()
    assert srv.wait_exit() == 2
    assert "--labels: expected a label selector such as 'app=web,tier!=test' (in the values of 'tier' in: " \
           "expected a value, ',' or ')', found the end)" in srv.output()


async def test_manifests_and_the_api_answer_the_same_with_the_same_filters(
        kubeapi: KubeAPIServer, serve, serve_manifests) -> None:
    for obj in _cluster():
        kubeapi.apply(obj)
    from_api = await serve(*FILTERS)
    from_files = await serve_manifests(_cluster(), *FILTERS)
    names = list(EXPECTED) + [(SVC.format("db", "a"), "SRV"), (SVC.format("web", "a"), "AAAA"),
                              ("9.0.244.10.in-addr.arpa.", "PTR"), ("1.0.244.10.in-addr.arpa.", "PTR")]
    api_answers = await _answers(from_api, names)
    assert await _answers(from_files, names) == api_answers
    # both halves are exercised: some names answer, some were filtered away
    rcodes = {rcode for rcode, _ in api_answers.values()}
    assert rcodes == {"NOERROR", "NXDOMAIN"}
