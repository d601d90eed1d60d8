"""Source ports and IDs of upstream UDP queries (udppool.py; RFC 5452 9.2), seen by a
real loopback upstream that records the source port and ID of every query it gets."""

from __future__ import annotations

import asyncio
import itertools
import random
import struct
from collections import defaultdict

import pytest

from clusterdns.forward.forwarder import Forwarder, ForwardError
from clusterdns.forward.udppool import ROTATE_QUERIES, ROTATE_SECONDS
from clusterdns.forward.upstream import UpstreamSpec
from clusterdns.wire.names import name_end, to_text, to_wire
from components import make_forwarder
from fakedns import LoopbackUdp, addresses, decode


class RecordingUpstream(LoopbackUdp):
    """UDP on 127.0.0.1: answers `<name> A 192.0.2.1` at once, except for names in
    `hold`, whose queries wait in `held` for the test to answer (to any port)."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, int, str]] = []  # (ID, source port, name)
        self.hold: set[str] = set()
        self.held: dict[str, tuple[bytes, tuple]] = {}

    @staticmethod
    def answer(query: bytes) -> bytes:
        qend = name_end(query, 12) + 4
        head = query[:2] + bytes([0x80 | (query[2] & 0x01), 0x80]) + struct.pack("!HHHH", 1, 1, 0, 0)
        return head + query[12:qend] + b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + bytes([192, 0, 2, 1])

    def datagram_received(self, data: bytes, addr: tuple) -> None:  # type: ignore[override]
        name = to_text(data[12:name_end(data, 12)], dot=False).lower()
        self.seen.append((int.from_bytes(data[:2], "big"), addr[1], name))
        if name in self.hold:
            self.held[name] = (data, addr)
        elif self.transport is not None:
            self.transport.sendto(self.answer(data), addr)

    def send_answer(self, name: str, port: int | None = None) -> None:
        """Answer the held query for `name`, from our own address and port, to its source
        port or to `port`."""
        data, addr = self.held[name]
        assert self.transport is not None
        self.transport.sendto(self.answer(data), (addr[0], addr[1] if port is None else port))

    async def wait_held(self, name: str) -> tuple[bytes, tuple]:
        for _ in range(200):  # at most 2 s
            if name in self.held:
                return self.held[name]
            await asyncio.sleep(0.01)
        raise AssertionError(f"no query for {name} arrived")


@pytest.fixture
async def upstream():
    up = RecordingUpstream()
    port = await up.start()
    yield up, port
    up.close()


def forwarder(port: int, **kw) -> Forwarder:
    """A forwarder to `port` whose pool rotates as udppool's defaults say."""
    fwd = make_forwarder([UpstreamSpec("127.0.0.1", port)], max_fails=10**6, **kw)
    pool = fwd.upstreams[0].pool
    pool.rotate_queries, pool.rotate_seconds = ROTATE_QUERIES, ROTATE_SECONDS
    return fwd


def n(text: str) -> bytes:
    return to_wire(text)


def test_rotation_defaults_are_short() -> None:
    """The decision (udppool.py docstring): a new port after 16 queries or 1 s, and the
    Forwarder builds its pools with those figures."""
    assert ROTATE_QUERIES == 16 and ROTATE_SECONDS == 1.0
    assert Forwarder.udp_rotate_queries == ROTATE_QUERIES
    assert Forwarder.udp_rotate_seconds == ROTATE_SECONDS
    fwd = make_forwarder([UpstreamSpec("127.0.0.1", 53)])
    try:
        pool = fwd.upstreams[0].pool
        assert (pool.rotate_queries, pool.rotate_seconds) == (ROTATE_QUERIES, ROTATE_SECONDS)
    finally:
        fwd.close()


async def test_sequential_queries_change_port_every_rotate_queries(upstream) -> None:
    """160 queries: runs of 16 on one port each, each run on another port than the last,
    and at least 9 distinct ports in all (a closed port may be drawn again, rarely)."""
    up, port = upstream
    fwd = forwarder(port)
    try:
        for i in range(160):
            assert addresses(decode(await fwd.query(n(f"q{i}.example.test"), 1))) == ["192.0.2.1"]
        assert fwd.upstreams[0].pool.opened == 10
    finally:
        fwd.close()
    ports = [p for _, p, _ in up.seen]
    assert len(ports) == 160
    runs = [ports[i:i + ROTATE_QUERIES] for i in range(0, 160, ROTATE_QUERIES)]
    assert all(len(set(run)) == 1 for run in runs)
    assert all(a[0] != b[0] for a, b in itertools.pairwise(runs))
    assert len(set(ports)) >= 9


async def test_port_changes_after_rotate_seconds(upstream) -> None:
    """A socket that carried few queries is still replaced once it is a second old."""
    up, port = upstream
    fwd = forwarder(port)
    try:
        await fwd.query(n("a.example.test"), 1)
        await fwd.query(n("b.example.test"), 1)
        await asyncio.sleep(ROTATE_SECONDS + 0.05)
        await fwd.query(n("c.example.test"), 1)
    finally:
        fwd.close()
    ports = [p for _, p, _ in up.seen]
    assert ports[0] == ports[1] and ports[2] != ports[0]


async def test_a_burst_is_spread_over_sockets(upstream) -> None:
    """48 questions in flight together: no port carries more than 16 of them, and every
    one gets its answer on the socket it left from."""
    up, port = upstream
    fwd = forwarder(port)
    try:
        answers = await asyncio.gather(*(fwd.query(n(f"b{i}.example.test"), 1) for i in range(48)))
        assert all(addresses(decode(a)) == ["192.0.2.1"] for a in answers)
        assert fwd.stats.spoofed == 0 and fwd.upstreams[0].pool.in_flight == 0
    finally:
        fwd.close()
    per_port: dict[int, int] = defaultdict(int)
    for _, p, _ in up.seen:
        per_port[p] += 1
    assert len(per_port) >= 3 and max(per_port.values()) <= ROTATE_QUERIES


async def test_answer_to_a_closed_stale_port_is_not_accepted(upstream) -> None:
    """The right answer (right address, port, ID, question) sent to the port the previous
    socket had: that socket is closed, so it never arrives; only the answer to the
    current port completes the query."""
    up, port = upstream
    fwd = forwarder(port, read_timeout=1.5, timeout=2.0)
    try:
        for i in range(ROTATE_QUERIES):
            await fwd.query(n(f"w{i}.example.test"), 1)
        stale = up.seen[-1][1]
        up.hold.add("new.example.test")
        task = asyncio.ensure_future(fwd.query(n("new.example.test"), 1))
        _, addr = await up.wait_held("new.example.test")
        assert addr[1] != stale  # the 17th query left from a new port
        up.send_answer("new.example.test", port=stale)
        await asyncio.sleep(0.1)
        assert not task.done()
        up.send_answer("new.example.test")
        assert addresses(decode(await asyncio.wait_for(task, 1.0))) == ["192.0.2.1"]
        assert fwd.stats.spoofed == 0  # the kernel dropped it: nobody listens there now
    finally:
        fwd.close()


async def test_answer_to_an_open_stale_port_is_dropped(upstream) -> None:
    """The previous socket is still open (a query of its own is in flight): the newer
    query's answer sent there matches nothing on it, is dropped and counted; the newer
    query still waits for its own port, and the older one is answered there."""
    up, port = upstream
    fwd = forwarder(port, read_timeout=1.5, timeout=2.0)
    try:
        for i in range(ROTATE_QUERIES - 1):
            await fwd.query(n(f"w{i}.example.test"), 1)
        up.hold |= {"old.example.test", "new.example.test"}
        old = asyncio.ensure_future(fwd.query(n("old.example.test"), 1))
        _, old_addr = await up.wait_held("old.example.test")
        new = asyncio.ensure_future(fwd.query(n("new.example.test"), 1))
        _, new_addr = await up.wait_held("new.example.test")
        assert old_addr[1] != new_addr[1]
        up.send_answer("new.example.test", port=old_addr[1])
        await asyncio.sleep(0.1)
        assert not new.done() and not old.done()
        assert fwd.stats.spoofed == 1
        up.send_answer("new.example.test")
        up.send_answer("old.example.test")
        for t in (new, old):
            assert addresses(decode(await asyncio.wait_for(t, 1.0))) == ["192.0.2.1"]
        assert fwd.stats.spoofed == 1 and fwd.upstreams[0].pool.in_flight == 0
    finally:
        fwd.close()


async def test_unanswered_query_on_a_stale_port_times_out(upstream) -> None:
    """Only a stale-port answer ever comes: the query fails (timeout), nothing accepted."""
    up, port = upstream
    fwd = forwarder(port, read_timeout=0.3, timeout=0.3)
    try:
        for i in range(ROTATE_QUERIES):
            await fwd.query(n(f"w{i}.example.test"), 1)
        stale = up.seen[-1][1]
        up.hold.add("new.example.test")
        task = asyncio.ensure_future(fwd.query(n("new.example.test"), 1))
        await up.wait_held("new.example.test")
        up.send_answer("new.example.test", port=stale)
        with pytest.raises(ForwardError):
            await asyncio.wait_for(task, 2.0)
    finally:
        fwd.close()


async def test_ids_look_random(upstream) -> None:
    """1000 queries: no ID repeats on one port, few repeats overall (16-bit birthday:
    about 8 expected), no sequence, every bit set about half the time; and they do not
    come from Python's seeded `random` (same seed, other IDs)."""
    up, port = upstream
    fwd = forwarder(port)
    try:
        for i in range(1000):
            await fwd.query(n(f"i{i}.example.test"), 1)
    finally:
        fwd.close()
    ids = [i for i, _, _ in up.seen]
    assert len(ids) == 1000
    by_port: dict[int, list[int]] = defaultdict(list)
    for qid, p, _ in up.seen:
        by_port[p].append(qid)
    assert all(len(set(v)) == len(v) for v in by_port.values())
    assert len(set(ids)) >= 970
    diffs = [(b - a) % 65536 for a, b in itertools.pairwise(ids)]
    assert sum(1 for d in diffs if d in (1, 65535)) <= 3
    assert len(set(diffs)) >= 950
    for bit in range(16):
        ones = sum(1 for i in ids if i >> bit & 1)
        assert 400 <= ones <= 600, (bit, ones)

    runs = []
    for _ in range(2):
        random.seed(1234)
        start = len(up.seen)
        fwd = forwarder(port)
        try:
            for i in range(20):
                await fwd.query(n(f"s{i}.example.test"), 1)
        finally:
            fwd.close()
        runs.append([i for i, _, _ in up.seen[start:]])
    assert runs[0] != runs[1]
