"""Timeouts for many queries in flight with one timer per pool, not one per query.

Queries mostly arrive with the same timeout, so their deadlines arrive in order: they go
in a queue swept by a single timer. One with a shorter deadline than the last queued (the
forwarder's overall deadline) gets a timer of its own. Shared by the UDP and TCP pools.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar


class Timed(Protocol):
    """What a queued query carries: its deadline, whether it still waits, its own timer."""

    deadline: float
    live: bool  # False once answered, failed or cancelled
    timer: asyncio.TimerHandle | None


T = TypeVar("T", bound=Timed)


class Deadlines(Generic[T]):
    """Calls `expire(query)` for each live query whose deadline has passed."""

    __slots__ = ("_expire", "_loop", "_queue", "_sweeper")

    def __init__(self, expire: Callable[[T], None]) -> None:
        self._expire = expire
        self._queue: deque[T] = deque()  # in deadline order
        self._sweeper: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def add(self, loop: asyncio.AbstractEventLoop, query: T, deadline: float) -> None:
        """`expire(query)` at `deadline` (loop time) unless the query is done by then."""
        self._loop = loop
        query.deadline = deadline
        q = self._queue
        if not q or q[-1].deadline <= deadline:
            q.append(query)
            if self._sweeper is None:
                self._sweeper = loop.call_at(deadline, self._sweep)
        else:
            query.timer = loop.call_at(deadline, self._expire, query)

    def trim(self) -> None:
        """Drop finished queries from the front (amortised O(1)); call when one finishes."""
        q = self._queue
        while q and not q[0].live:
            q.popleft()

    def clear(self) -> None:
        """Forget every query and stop the timer (the pool is closing)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        self._queue.clear()

    def _sweep(self) -> None:
        self._sweeper = None
        loop = self._loop
        assert loop is not None
        q = self._queue
        now = loop.time()
        while q:
            query = q[0]
            if query.live and query.deadline > now:
                break
            q.popleft()
            if query.live:
                self._expire(query)
        if q:
            self._sweeper = loop.call_at(q[0].deadline, self._sweep)
