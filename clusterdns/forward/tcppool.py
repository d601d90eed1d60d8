"""Pooled TCP connections to one upstream, for TC retries and force_tcp: reused while
fresh, so a TCP exchange need not pay a handshake each time; closed after `expire`
idle seconds.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from clusterdns.wire import scan as W
from clusterdns.wire.constants import HEADER

if TYPE_CHECKING:
    from clusterdns.forward.forwarder import Forwarder
    from clusterdns.forward.upstream import UpstreamStats


@dataclass(slots=True)
class _Conn:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    last_used: float = field(default_factory=time.monotonic)

    def close(self) -> None:
        self.writer.close()


class TcpPool:
    """One upstream's idle TCP connections (most recently used first)."""

    def __init__(self, peer: tuple[str, int], fwd: Forwarder, stats: UpstreamStats) -> None:
        self._peer = peer
        self._fwd = fwd
        self.stats = stats
        self._idle: list[_Conn] = []

    async def exchange(self, name: bytes, qtype: int, qclass: int, do: bool, cd: bool) -> bytes:
        """One exchange on a pooled connection; a pooled one the server closed is retried once."""
        qid = secrets.randbits(16)
        wire = W.build_query(qid, name, qtype, qclass, do=do, cd=cd)
        question = wire[HEADER:len(wire) - 11]
        for attempt in range(2):
            conn = self._take()
            reused = conn is not None
            if conn is None:
                reader, writer = await asyncio.open_connection(*self._peer)
                self._fwd.stats.conns_opened += 1
                self.stats.conn_misses += 1
                conn = _Conn(reader, writer)
            else:
                self._fwd.stats.conns_reused += 1
                self.stats.conn_hits += 1
            done = False
            try:
                conn.writer.write(len(wire).to_bytes(2, "big") + wire)
                await conn.writer.drain()
                for _ in range(4):  # skip a few stray messages, then give up on the connection
                    size = int.from_bytes(await conn.reader.readexactly(2), "big")
                    answer = await conn.reader.readexactly(size)
                    if W.is_answer_to(answer, qid, question):
                        done = True
                        conn.last_used = time.monotonic()
                        self._idle.append(conn)
                        return answer
                    self._fwd.stats.spoofed += 1
                raise ConnectionError("no matching answer on the TCP connection")
            except (ConnectionError, asyncio.IncompleteReadError):
                if reused and attempt == 0:
                    continue  # the server closed an idle pooled connection: open a new one
                raise
            finally:
                if not done:
                    conn.close()
        raise ConnectionError("unreachable")

    def _take(self) -> _Conn | None:
        """Most recently used idle connection that has not expired (others are closed)."""
        deadline = time.monotonic() - self._fwd.expire
        while self._idle:
            conn = self._idle.pop()
            if conn.last_used >= deadline and not conn.writer.is_closing():
                return conn
            conn.close()
        return None

    def sweep(self) -> None:
        """Close pooled connections idle longer than `expire`."""
        deadline = time.monotonic() - self._fwd.expire
        keep = [c for c in self._idle if c.last_used >= deadline]
        for c in self._idle:
            if c.last_used < deadline:
                c.close()
        self._idle = keep

    def close(self) -> None:
        for c in self._idle:
            c.close()
        self._idle.clear()
