"""A stream that goes silent (no event, no bookmark) is declared dead and restarted."""

from __future__ import annotations

import asyncio

import pytest

from conftest import eventually
from kubeapi import KubeAPIServer, service


async def test_silent_stream_is_detected_and_restarted(kubeapi: KubeAPIServer, start_source,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    rs = await start_source(inactivity_timeout=0.6)
    opened = kubeapi.watches("services")
    kubeapi.silence("services")
    rv = kubeapi.apply(service("app", "quiet", "10.96.0.40"))  # swallowed by the silent stream

    await eventually(lambda: kubeapi.watches("services") > opened, timeout=3, what="a new watch")
    assert any("no event or bookmark for 0.6 s" in r.getMessage() for r in caplog.records)
    assert rs.store.view("app", "quiet") is None

    kubeapi.silence("services", on=False)
    await eventually(lambda: rs.store.view("app", "quiet"), timeout=3, what="event on the restarted stream")
    assert int(rs.state("services").version) >= rv
    assert kubeapi.lists("services") == 1, "a silent stream resumes from its version"


async def test_bookmarks_keep_a_quiet_stream_alive(kubeapi: KubeAPIServer, start_source) -> None:
    """No changes for several inactivity periods, but bookmarks: the stream is not restarted."""
    rs = await start_source(inactivity_timeout=0.5)
    opened = kubeapi.watches("services")
    await asyncio.sleep(1.6)  # three inactivity periods with nothing but bookmarks
    assert kubeapi.watches("services") == opened
    assert not rs.source.outage
