"""TCP pipelining (RFC 7766 6.2.1.1) against real TCP DNS servers on loopback.

`PipeServer` is written here, not FakeUpstream: it collects several queries and
answers them in reverse order, can close a connection after answering some, can send
a wrong-ID or wrong-question answer before each right one, or stay silent. It counts
the connections it accepted and notices an ID used twice at once on one connection.
"""

from __future__ import annotations

import asyncio
import ipaddress
import zlib
from collections.abc import Callable
from typing import Self

import dns.rcode
import pytest

from clusterdns.forward import tcppool
from clusterdns.forward.forwarder import Forwarder, ForwardError
from clusterdns.forward.table import ForwardZone
from clusterdns.forward.upstream import UpstreamSpec
from clusterdns.wire.names import to_wire
from components import make_forwarder
from fakedns import decode, question

ATTACK = bytes([6, 6, 6, 6])


def address_for(qname: bytes) -> bytes:
    """The one right A record of a name (wire form), as PipeServer answers it."""
    return bytes([10]) + zlib.crc32(qname).to_bytes(4, "big")[1:]


def question_end(query: bytes) -> int:
    i = 12
    while query[i]:
        i += 1 + query[i]
    return i + 1 + 4


def reply(query: bytes, address: bytes, qid: int | None = None) -> bytes:
    """Our answer to `query`: QR, its question as sent, one A record (no OPT)."""
    end = question_end(query)
    head = (query[:2] if qid is None else qid.to_bytes(2, "big")) + \
        bytes([query[2] | 0x80, 0x00]) + b"\x00\x01\x00\x01\x00\x00\x00\x00"
    rr = b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04" + address
    return head + query[12:end] + rr


class _PipeConn(asyncio.Protocol):
    def __init__(self, server: PipeServer) -> None:
        self.server = server
        self.buf = bytearray()
        self.pending: list[bytes] = []
        self.in_flight: set[bytes] = set()
        self.answered = 0
        self.timer: asyncio.TimerHandle | None = None
        self.transport: asyncio.Transport | None = None
        self.number = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server.conns += 1
        self.number = self.server.conns
        self.server.open.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.open.discard(self)
        if self.timer is not None:
            self.timer.cancel()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while len(self.buf) >= 2:
            size = int.from_bytes(self.buf[:2], "big")
            if len(self.buf) < 2 + size:
                break
            query = bytes(self.buf[2:2 + size])
            del self.buf[:2 + size]
            self.server.queries += 1
            if query[:2] in self.in_flight:
                self.server.duplicate_ids += 1
            self.in_flight.add(query[:2])
            self.pending.append(query)
            self.server.max_in_flight = max(self.server.max_in_flight, len(self.in_flight))
        if self.server.silent:
            return
        if len(self.pending) >= self.server.batch:
            self.flush()
        elif self.pending and self.timer is None:
            self.timer = asyncio.get_running_loop().call_later(self.server.wait, self.flush)

    def flush(self) -> None:
        self.timer = None
        batch, self.pending = self.pending, []
        assert self.transport is not None
        if self.transport.is_closing():
            return
        s = self.server
        out = []
        for query in reversed(batch):  # out of order: the last asked is answered first
            if s.close_after is not None and self.number <= s.close_conns \
                    and self.answered >= s.close_after:
                break
            self.in_flight.discard(query[:2])
            addr = address_for(query[12:question_end(query) - 4])
            if s.wrong_first:
                qid = int.from_bytes(query[:2], "big")
                out.append(reply(query, ATTACK, qid ^ 0x5A5A))  # wrong ID
                bad = bytearray(query)
                bad[13] ^= 0x20  # same ID, the question's case changed (RFC 5452 9.1)
                out.append(reply(bytes(bad), ATTACK))
            out.append(reply(query, addr))
            self.answered += 1
        self.transport.write(b"".join(len(m).to_bytes(2, "big") + m for m in out))
        if s.close_after is not None and self.number <= s.close_conns \
                and self.answered >= s.close_after:
            self.transport.close()  # mid-flight: what is left unanswered stays so


class PipeServer:
    def __init__(self, *, batch: int = 64, wait: float = 0.005, close_after: int | None = None,
                 close_conns: int = 1 << 30, wrong_first: bool = False, silent: bool = False) -> None:
        self.batch, self.wait = batch, wait
        self.close_after, self.close_conns = close_after, close_conns
        self.wrong_first, self.silent = wrong_first, silent
        self.conns = 0
        self.queries = 0
        self.duplicate_ids = 0
        self.max_in_flight = 0
        self.open: set[_PipeConn] = set()
        self.port = 0
        self._server: asyncio.AbstractServer | None = None

    async def __aenter__(self) -> Self:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _PipeConn(self), "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for c in list(self.open):
            assert c.transport is not None
            c.transport.abort()
        await self._server.wait_closed()


def forwarder(port: int, **kw: object) -> Forwarder:
    kw.setdefault("read_timeout", 2.0)
    kw.setdefault("timeout", 3.0)
    return make_forwarder([UpstreamSpec("127.0.0.1", port, force_tcp=True)], **kw)  # type: ignore[arg-type]


def names(n: int, tag: str = "q") -> list[bytes]:
    return [to_wire(f"{tag}{i}.example.test") for i in range(n)]


def check(qname: bytes, answer: bytes) -> None:
    """The answer is to this very question, with this name's own address."""
    msg = decode(answer)
    assert msg.question[0].name.to_wire() == qname
    [rrset] = msg.answer
    [rd] = list(rrset)
    assert rd.address == str(ipaddress.ip_address(address_for(qname)))


async def ask_all(fwd: Forwarder, qnames: list[bytes], limit: float = 10.0) -> list[bytes | BaseException]:
    async with asyncio.timeout(limit):  # never hang
        return await asyncio.gather(*(fwd.query(n, 1) for n in qnames), return_exceptions=True)


async def test_many_queries_share_one_connection_and_each_gets_its_own_answer() -> None:
    """800 at once over one connection, answered in reverse order per batch: none lost
    or crossed, no ID twice in flight."""
    async with PipeServer(batch=200, wait=0.02) as srv:
        fwd = forwarder(srv.port)
        try:
            qnames = names(800)
            answers = await ask_all(fwd, qnames)
            for n, a in zip(qnames, answers, strict=True):
                check(n, a)
            assert srv.conns == 1 and srv.queries == 800
            assert srv.max_in_flight >= 100  # really pipelined
            assert srv.duplicate_ids == 0
            assert fwd.stats.conns_opened == 1 and fwd.stats.conns_reused == 799
            assert fwd.stats.failures == 0 and fwd.stats.spoofed == 0
        finally:
            fwd.close()


async def test_forwarder_tcp_path_creates_no_task_per_query() -> None:
    """`start()` with callbacks: 300 questions in flight over TCP, no Task each."""
    async with PipeServer(batch=1000, wait=0.05) as srv:
        fwd = forwarder(srv.port)
        try:
            got: dict[bytes, bytes | BaseException] = {}
            done = asyncio.Event()
            qnames = names(300, "t")

            def callback(n: bytes) -> Callable[[bytes | None, BaseException | None], None]:
                def cb(answer: bytes | None, exc: BaseException | None) -> None:
                    got[n] = answer if exc is None else exc  # type: ignore[assignment]
                    if len(got) == len(qnames):
                        done.set()
                return cb

            before = len(asyncio.all_tasks())
            for n in qnames:
                fwd.start(n, 1, 1, False, False, callback(n))
            await asyncio.sleep(0.01)
            assert len(asyncio.all_tasks()) <= before + 2  # the sweeper and one connect
            async with asyncio.timeout(5):
                await done.wait()
            for n in qnames:
                check(n, got[n])  # type: ignore[arg-type]
            assert srv.conns == 1
        finally:
            fwd.close()


async def test_in_flight_cap_per_connection_opens_the_second_and_then_waits() -> None:
    """With 100 in flight per connection and 2 connections, 500 at once all get their
    answer: the rest wait for room instead of failing; never more than 2 connections."""
    async with PipeServer(batch=1000, wait=0.02) as srv:
        fwd = forwarder(srv.port)
        fwd.upstreams[0].tcp.max_in_flight = 100
        try:
            qnames = names(500)
            answers = await ask_all(fwd, qnames)
            for n, a in zip(qnames, answers, strict=True):
                assert isinstance(a, bytes), a
                check(n, a)
            assert srv.conns == 2
            assert srv.max_in_flight <= 100
            assert srv.duplicate_ids == 0 and fwd.stats.failures == 0
        finally:
            fwd.close()


async def test_wrong_id_and_wrong_question_answers_are_dropped_and_counted() -> None:
    async with PipeServer(wrong_first=True, batch=50) as srv:
        fwd = forwarder(srv.port)
        try:
            qnames = names(200)
            answers = await ask_all(fwd, qnames)
            for n, a in zip(qnames, answers, strict=True):
                assert isinstance(a, bytes), a
                check(n, a)  # never 6.6.6.6
            assert fwd.stats.spoofed == 2 * 200
            assert srv.conns == 1
        finally:
            fwd.close()


async def test_connection_closed_mid_flight_resends_on_a_new_connection() -> None:
    """The first connection answers 50 of 300 and closes: the other 250 are sent again
    on a new connection and answered; the forwarder sees no failure."""
    async with PipeServer(batch=1000, wait=0.02, close_after=50, close_conns=1) as srv:
        fwd = forwarder(srv.port)
        try:
            qnames = names(300)
            answers = await ask_all(fwd, qnames)
            for n, a in zip(qnames, answers, strict=True):
                assert isinstance(a, bytes), a
                check(n, a)
            assert srv.conns == 2 and srv.queries == 300 + 250
            assert fwd.stats.failures == 0
        finally:
            fwd.close()


async def test_connections_that_keep_closing_fail_fast_into_servfail() -> None:
    """Every connection answers 40 and closes: a query resent once and cut off again
    fails at once (ConnectionError -> the forwarder's SERVFAIL), within the bound."""
    async with PipeServer(batch=1000, wait=0.02, close_after=40) as srv:
        zone = ForwardZone(".", forwarder(srv.port, read_timeout=3.0, timeout=3.0), None)
        try:
            qs = [question(f"c{i}.example.test")[0] for i in range(200)]
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            async with asyncio.timeout(10):
                replies = await asyncio.gather(*(zone.resolve(q, None) for q in qs))
            assert loop.time() - t0 < 2.0  # failed at once, not by timing out
            ok = servfail = 0
            for q, r in zip(qs, replies, strict=True):
                msg = decode(r)
                if msg.rcode() == dns.rcode.NOERROR:
                    check(q.name, r)
                    ok += 1
                else:
                    assert msg.rcode() == dns.rcode.SERVFAIL
                    servfail += 1
            assert ok >= 80 and servfail >= 1 and ok + servfail == 200
            assert zone.forwarder.stats.failures == servfail
        finally:
            zone.close()


async def test_silent_upstream_times_out_and_its_connection_is_dropped() -> None:
    async with PipeServer(silent=True) as srv:
        fwd = forwarder(srv.port, read_timeout=0.3, timeout=0.3)
        try:
            answers = await ask_all(fwd, names(20), limit=3.0)
            assert all(isinstance(a, ForwardError) for a in answers)
            assert fwd.stats.failures == 20
            await asyncio.sleep(0.05)
            assert fwd.upstreams[0].tcp.connections == 0  # nothing came back: not reused
        finally:
            fwd.close()


async def test_refused_connects_fail_fast_then_back_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nobody listens: each connect is refused at once; after two in a row new queries
    fail without a connect until the backoff passes."""
    monkeypatch.setattr(tcppool, "_BACKOFF_BASE", 0.5)  # room for a slow machine
    async with PipeServer() as srv:
        port = srv.port
    fwd = forwarder(port, max_fails=100)
    pool = fwd.upstreams[0].tcp
    try:
        for _ in range(2):
            with pytest.raises(ForwardError):
                async with asyncio.timeout(2):
                    await fwd.query(to_wire("x.example.test"), 1)
        assert pool.opened == 2
        with pytest.raises(ForwardError):
            async with asyncio.timeout(2):
                await fwd.query(to_wire("x.example.test"), 1)
        assert pool.opened == 2  # backing off: no third connect yet
        await asyncio.sleep(0.6)
        with pytest.raises(ForwardError):
            async with asyncio.timeout(2):
                await fwd.query(to_wire("x.example.test"), 1)
        assert pool.opened == 3
    finally:
        fwd.close()


async def test_close_fails_queries_in_flight_at_once() -> None:
    async with PipeServer(silent=True) as srv:
        fwd = forwarder(srv.port, read_timeout=5.0, timeout=5.0)
        futs = [asyncio.ensure_future(fwd.query(n, 1)) for n in names(50)]
        await asyncio.sleep(0.05)
        fwd.close()
        async with asyncio.timeout(1):
            res = await asyncio.gather(*futs, return_exceptions=True)
        assert all(isinstance(r, ForwardError) for r in res)


async def test_truncated_udp_answers_are_retried_over_the_shared_tcp_pool(fake) -> None:
    """Many TC answers at once: their TCP retries share the pool's connections."""
    many = [f"big.example.test. 300 IN A 192.0.2.{i}" for i in range(1, 60)]
    up = await fake(*many, udp_tc=True)
    fwd = make_forwarder([UpstreamSpec("127.0.0.1", up.port)])
    try:
        async with asyncio.timeout(10):
            answers = await asyncio.gather(*(fwd.query(to_wire("big.example.test"), 1)
                                             for _ in range(50)))
        for a in answers:
            msg = decode(a)
            assert len(msg.answer[0]) == 59 and not msg.flags & 0x0200
        assert fwd.stats.tc_retries == 50 and up.count("big.example.test", "tcp") == 50
        assert fwd.upstreams[0].tcp.opened <= 2
    finally:
        fwd.close()


def test_pipelining_and_resend_under_uvloop() -> None:
    """The servers run on uvloop, whose transports are not asyncio's: same behaviour."""
    uvloop = pytest.importorskip("uvloop")

    async def main() -> None:
        async with PipeServer(batch=100, wait=0.01, close_after=150, close_conns=1) as srv:
            fwd = forwarder(srv.port)
            try:
                qnames = names(400)
                answers = await ask_all(fwd, qnames)
                for n, a in zip(qnames, answers, strict=True):
                    assert isinstance(a, bytes), a
                    check(n, a)
                assert srv.conns == 2 and srv.queries == 400 + 250
                assert srv.duplicate_ids == 0 and fwd.stats.failures == 0
            finally:
                fwd.close()

    loop = uvloop.new_event_loop()
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
