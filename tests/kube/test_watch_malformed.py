"""Malformed objects are skipped with a warning naming them; everything else is served."""

from __future__ import annotations

import pytest

from conftest import eventually
from kubeapi import KubeAPIServer, endpoint_slice, service


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "malformed" in r.getMessage()]


async def test_malformed_objects_in_the_list_are_skipped_and_named(kubeapi: KubeAPIServer, start_source,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    kubeapi.apply(service("app", "good", "10.96.0.1"))
    kubeapi.apply(service("app", "bad-ip", "10.96.0.999"))
    bad_slice = endpoint_slice("app", "good-1", "good", ["10.244.0.1"])
    bad_slice["endpoints"][0]["conditions"]["ready"] = "yes"
    kubeapi.apply(bad_slice)
    kubeapi.apply(endpoint_slice("app", "good-2", "good", ["10.244.0.2"]))
    kubeapi.add_raw("services", {"metadata": {"namespace": "app"}, "spec": {}})  # no name

    rs = await start_source()

    assert rs.store.synced and list(rs.store.services) == [("app", "good")]
    assert [b.ip for b in rs.store.view("app", "good").backends] == ["10.244.0.2"]
    warnings = _warnings(caplog)
    assert any("Service app/bad-ip" in w and "spec.clusterIPs[0]" in w for w in warnings), warnings
    assert any("EndpointSlice app/good-1" in w and "endpoints[0].conditions.ready" in w for w in warnings), warnings
    assert any("metadata.name" in w for w in warnings), warnings
    assert rs.state("services").skipped == 2 and rs.state("endpointslices").skipped == 1


async def test_malformed_watch_event_is_skipped_and_the_stream_goes_on(kubeapi: KubeAPIServer, start_source,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    rs = await start_source()
    watches = kubeapi.watches("services")
    bad = service("app", "bad-port", "10.96.0.5", ports=[{"name": "x", "port": 70000, "protocol": "TCP"}])
    kubeapi.apply(bad)
    kubeapi.apply(service("app", "fine", "10.96.0.6"))
    await eventually(lambda: rs.store.view("app", "fine"), what="the next event")
    assert rs.store.view("app", "bad-port") is None
    assert any("Service app/bad-port" in w and "spec.ports[0].port" in w for w in _warnings(caplog))
    assert kubeapi.watches("services") == watches, "one bad object must not cost the stream"
    assert not rs.source.outage
