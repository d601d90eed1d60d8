"""DNS over TCP (RFC 7766): 2-byte length framing, many and pipelined queries per
connection, answers sent as they are ready, an idle timeout and a connection cap."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from clusterdns.server.handler import Handler
from clusterdns.server.table import key_of, question_bounds

log = logging.getLogger("clusterdns")


@dataclass
class TCPLimits:
    idle_timeout: float = 10.0  # RFC 7766 6.2.3: servers may close idle connections
    max_connections: int = 1024  # beyond it new connections are closed at once
    open: set = field(default_factory=set)  # live protocols, shared by all listeners


class TCPProtocol(asyncio.Protocol):
    def __init__(self, handler: Handler, limits: TCPLimits) -> None:
        self.handler = handler
        self.answers = handler.table.tcp
        self.limits = limits
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self._idle: asyncio.TimerHandle | None = None
        self._pending = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if len(self.limits.open) >= self.limits.max_connections:
            log.warning("tcp connection cap (%d) reached; closing a new connection", self.limits.max_connections)
            transport.close()
            return
        self.limits.open.add(self)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self.limits.open.discard(self)
        if self._idle is not None:
            self._idle.cancel()
        self.transport = None

    def _arm(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
        loop = asyncio.get_running_loop()
        self._idle = loop.call_later(self.limits.idle_timeout, self._timeout)

    def _timeout(self) -> None:
        if self._pending:  # answers still coming: not idle
            self._arm()
        elif self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self._arm()
        buf = self.buf
        while len(buf) >= 2:
            size = (buf[0] << 8) | buf[1]
            if len(buf) < 2 + size:
                break
            msg = bytes(buf[2:2 + size])
            del buf[:2 + size]
            self._answer(msg)

    def _answer(self, msg: bytes) -> None:
        end = question_bounds(msg)
        if end > 12:
            entry = self.answers.get(key_of(msg, end))
            if entry is not None:
                self._write(msg[:2] + entry[0] + msg[12:end] + entry[1])
                return
        reply = self.handler.handle(msg, True)
        if reply is None:
            return
        if isinstance(reply, bytes):
            self._write(reply)
        else:
            self._pending += 1
            asyncio.ensure_future(self._write_later(reply))

    async def _write_later(self, pending) -> None:  # noqa: ANN001
        try:
            reply = await pending
        finally:
            self._pending -= 1
        if reply is not None:
            self._write(reply)

    def _write(self, reply: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(len(reply).to_bytes(2, "big") + reply)
