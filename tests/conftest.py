"""Shared fixtures: one clusterdns process serving the demo and the test cluster; fake upstreams
and a fake clock for the forwarding and cache tests."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fakedns import Clock, FakeUpstream
from helpers import DEMO, TEST_CLUSTER, ServerProcess


@pytest.fixture(scope="session")
def cluster_server() -> Iterator[ServerProcess]:
    """The demo cluster plus tests/data/cluster.yaml, on 127.0.0.1 and ::1, port 0."""
    with ServerProcess("serve", "--manifests", str(DEMO), "--manifests", str(TEST_CLUSTER),
                       "--listen", "127.0.0.1:0", "--listen", "[::1]:0") as srv:
        yield srv


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def fake() -> AsyncIterator[Callable[..., Awaitable[FakeUpstream]]]:
    """Start FakeUpstreams on 127.0.0.1; all stopped at the end."""
    started: list[FakeUpstream] = []

    async def make(*records: str, **kw: Any) -> FakeUpstream:
        up = await FakeUpstream(list(records), **kw).start()
        started.append(up)
        return up

    yield make
    for up in started:
        await up.stop()
