"""A small HTTP/1.1 GET responder on the running asyncio loop, for /health, /ready and /metrics.

Why not aiohttp: node-cache must stay within 40 MB RSS with a full cache, and importing
aiohttp's server side costs ~16 MB of that (`import uvloop` 21.2 MB vs `import uvloop,
aiohttp.web` 37.2 MB), only to serve three fixed GET endpoints to the kubelet and
Prometheus. This serves exactly that: one request per connection (`Connection: close`),
sync handlers, and bounds so a slow or hostile client on the probe port cannot hold
memory or sockets: request head at most `max_head` bytes, the whole exchange within
`deadline` seconds, at most `max_connections` open at once (beyond, closed at once).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Callable, Mapping
from http import HTTPStatus
from typing import NamedTuple, cast
from urllib.parse import parse_qs, unquote, urlsplit

log = logging.getLogger("clusterdns")

_END = b"\r\n\r\n"
_TEXT = "text/plain; charset=utf-8"


class Request(NamedTuple):
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    """lower-case name -> value; repeated headers joined with ','."""


class Reply(NamedTuple):
    status: int
    content_type: str
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()
    """extra headers (e.g. Content-Encoding); Content-Type/-Length/Connection are added."""


#: a route's handler; a plain (status, content type, body) tuple is a Reply too
Handler = Callable[[Request], "Reply | tuple[int, str, bytes]"]


def _reply(status: int, text: str, headers: tuple[tuple[str, str], ...] = ()) -> Reply:
    return Reply(status, _TEXT, text.encode(), headers)


def _encode(reply: Reply, head_only: bool) -> bytes:
    status = HTTPStatus(reply.status)
    lines = [
        f"HTTP/1.1 {status.value} {status.phrase}",
        f"Content-Type: {reply.content_type}",
        f"Content-Length: {len(reply.body)}",
        "Connection: close",
    ]
    lines += [f"{name}: {value}" for name, value in reply.headers]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + reply.body


def parse_head(head: bytes) -> Request | None:
    """Request line and headers (without the blank line) -> Request; None when malformed."""
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes every byte
        return None
    line, *fields = text.split("\r\n")
    parts = line.split(" ")
    if len(parts) != 3 or not parts[0].isalpha() or not parts[2].startswith("HTTP/1."):
        return None
    headers: dict[str, str] = {}
    for field in fields:
        name, sep, value = field.partition(":")
        if not sep or not name or name != name.strip():
            return None
        key = name.lower()
        headers[key] = f"{headers[key]},{value.strip()}" if key in headers else value.strip()
    target = urlsplit(parts[1])
    return Request(parts[0].upper(), unquote(target.path) or "/", parse_qs(target.query), headers)


class _Connection(asyncio.Protocol):
    """One request, one reply, then close; aborted when the deadline passes first."""

    def __init__(self, responder: HttpResponder) -> None:
        self.responder = responder
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.answered = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's TCPTransport is not a subclass
        self.transport = transport
        r = self.responder
        if len(r.connections) >= r.max_connections:
            transport.abort()  # over the cap: no buffer, no timer, nothing held
            return
        r.connections.add(self)
        self.timer = asyncio.get_running_loop().call_later(r.deadline, transport.abort)

    def data_received(self, data: bytes) -> None:
        if self.answered or self.transport is None:
            return
        start = max(0, len(self.buf) - 3)
        self.buf += data
        end = self.buf.find(_END, start)
        limit = self.responder.max_head
        if end < 0 and len(self.buf) <= limit:
            return
        if end < 0 or end + len(_END) > limit:
            self._send(_reply(431, "request header fields too large\n"), False)
            return
        request = parse_head(bytes(self.buf[:end]))
        self.buf.clear()
        if request is None:
            self._send(_reply(400, "bad request\n"), False)
            return
        self._send(self.responder.respond(request), request.method == "HEAD")

    def eof_received(self) -> bool | None:
        if not self.answered and self.transport is not None:
            self.transport.abort()  # half a request, then EOF: nothing will complete it
        return None

    def _send(self, reply: Reply, head_only: bool) -> None:
        assert self.transport is not None
        self.answered = True
        self.transport.pause_reading()
        self.transport.write(_encode(reply, head_only))
        self.transport.close()  # after the write buffer drains; the deadline still applies

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.responder.connections.discard(self)
        self.transport = None


class HttpResponder:
    """Serves `routes` (path -> handler) to GET and HEAD; 404 unknown paths, 405 other methods."""

    def __init__(
        self, routes: Mapping[str, Handler], *, deadline: float = 10.0, max_head: int = 8192, max_connections: int = 64
    ) -> None:
        self.routes = dict(routes)
        self.deadline = deadline
        self.max_head = max_head
        self.max_connections = max_connections
        self.connections: set[_Connection] = set()
        self.port = 0
        self._servers: list[asyncio.Server] = []

    def respond(self, request: Request) -> Reply:
        handler = self.routes.get(request.path)
        if handler is None:
            return _reply(404, "404: Not Found\n")
        if request.method not in ("GET", "HEAD"):
            return _reply(405, "405: Method Not Allowed\n", (("Allow", "GET, HEAD"),))
        try:
            return Reply(*handler(request))
        except Exception:
            log.exception("%s %s failed", request.method, request.path)
            return _reply(500, "500: Internal Server Error\n")

    async def start(self, host: str, port: int) -> int:
        """Listen on host:port ('' = every address, port 0 = a free one); returns the port.

        With '' and port 0 the IPv4 and IPv6 sockets share the one port reported.
        """
        loop = asyncio.get_running_loop()
        hosts: list[str | None] = [host] if host else ["0.0.0.0", "::"] if port == 0 else [None]
        try:
            for h in hosts:
                try:
                    server = await loop.create_server(lambda: _Connection(self), h, port, reuse_address=True)
                except OSError as exc:
                    if h == "::" and (exc.errno in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL) or not socket.has_ipv6):
                        continue  # no IPv6 here: IPv4 alone is every address
                    raise
                self._servers.append(server)
                port = server.sockets[0].getsockname()[1]
        except BaseException:
            await self.stop()
            raise
        self.port = port
        return port

    async def stop(self) -> None:
        """Close the listeners and every open connection."""
        servers, self._servers = self._servers, []
        for server in servers:
            server.close()
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.abort()
        for server in servers:
            await server.wait_closed()
