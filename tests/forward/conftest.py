"""Fixtures for the forwarding tests: fake upstreams and a fake clock."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fakedns import Clock, FakeUpstream


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
