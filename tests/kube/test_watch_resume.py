"""A dropped stream resumes from the newest resourceVersion, without re-listing."""

from __future__ import annotations

from conftest import eventually
from kubeapi import KubeAPIServer, service


def _watch_versions(kubeapi: KubeAPIServer, resource: str) -> list[str]:
    return [r.params["resourceVersion"] for r in kubeapi.requests if r.resource == resource and r.type == "watch"]


async def test_stream_cut_mid_event_resumes_without_relist(kubeapi: KubeAPIServer, start_source) -> None:
    """The half-sent event is not applied; the resumed watch delivers it whole."""
    rs = await start_source()
    kubeapi.apply(service("app", "a", "10.96.0.1"))
    await eventually(lambda: rs.store.view("app", "a"), what="a")
    seen = rs.state("services").version

    kubeapi.silence("services")  # hold the next event back, then cut while it is in flight
    rv_b = kubeapi.apply(service("app", "b", "10.96.0.2"))
    kubeapi.silence("services", on=False)
    kubeapi.cut_next["services"] = 0  # the next stream is cut halfway through its first event
    await eventually(lambda: rs.store.view("app", "b"), what="b after two resumes")

    assert kubeapi.lists("services") == 1, "a dropped stream must not re-list"
    versions = _watch_versions(kubeapi, "services")
    assert len(versions) >= 3 and versions[1] == seen and versions[2] == seen
    assert rs.state("services").version == str(rv_b)
    assert rs.state("services").events == 2  # a and b, each applied once


async def test_streams_cut_between_events_resume_and_catch_up(kubeapi: KubeAPIServer, start_source) -> None:
    """Changes made while the stream was down arrive on the resumed watch."""
    rs = await start_source()
    for i in range(3):
        kubeapi.cut_streams("services", mid_event=False)
        kubeapi.apply(service("app", f"s{i}", f"10.96.0.{i + 10}"))
    await eventually(lambda: all(rs.store.view("app", f"s{i}") for i in range(3)), what="all three")
    assert kubeapi.lists("services") == 1
    assert kubeapi.watches("services") >= 2


async def test_server_side_timeout_ends_stream_and_watch_resumes(kubeapi: KubeAPIServer, start_source) -> None:
    """`timeoutSeconds` ends every stream sooner or later: that is routine, not an error."""
    rs = await start_source(watch_timeout=1.0)
    await eventually(lambda: kubeapi.watches("services") >= 2, timeout=5, what="second watch after timeout")
    kubeapi.apply(service("app", "late", "10.96.0.77"))
    await eventually(lambda: rs.store.view("app", "late"), what="event on the resumed stream")
    assert kubeapi.lists("services") == 1
    assert rs.state("services").failures == 0 and not rs.source.outage
