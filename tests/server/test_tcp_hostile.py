"""Hostile DNS-over-TCP clients against a real server on loopback (RFC 7766 6.2.3): a
slow-loris writer and a pipelining client that never reads must not hold a slot, nor the
server's memory, while ordinary clients keep being answered."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator

import dns.message
import dns.query
import dns.rcode
import pytest

from helpers import DEMO, TEST_CLUSTER, ServerProcess

NAME = "httpd-svc.default.svc.cluster.local."
BIG = "big.team.svc.cluster.local."  # 300 A records: about 4.8 kB an answer over TCP
ESTABLISHED = 1  # tcpi_state, include/net/tcp_states.h
PIPELINED = 20_000


def serve(idle: float) -> ServerProcess:
    return ServerProcess("serve", "--manifests", str(DEMO), "--manifests", str(TEST_CLUSTER),
                         "--listen", "127.0.0.1:0", "--tcp-idle-timeout", str(idle))


@pytest.fixture(scope="module")
def idle1() -> Iterator[ServerProcess]:
    """A server that closes a connection after 1 s without progress."""
    with serve(1) as srv:
        yield srv


@pytest.fixture(scope="module")
def idle3() -> Iterator[ServerProcess]:
    """Room for a hostile client to fill the server's buffers before the idle timeout."""
    with serve(3) as srv:
        yield srv


def tcp_state(sock: socket.socket) -> int:
    """The kernel's view of our end: ESTABLISHED until the server sends FIN or RST."""
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def framed(wire: bytes) -> bytes:
    return struct.pack("!H", len(wire)) + wire


def read_exactly(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:  # bounded: each recv waits at most the socket's timeout
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError(f"closed after {len(data)} of {size} bytes")
        data += chunk
    return bytes(data)


def read_message(sock: socket.socket) -> bytes:
    return read_exactly(sock, struct.unpack("!H", read_exactly(sock, 2))[0])


def answered(srv: ServerProcess, name: str = NAME) -> bool:
    """An ordinary client, on its own connection, gets its answer."""
    r = dns.query.tcp(dns.message.make_query(name, "A"), "127.0.0.1", port=srv.port, timeout=3)
    return r.rcode() == dns.rcode.NOERROR and bool(r.answer)


def pipeline(srv: ServerProcess, count: int) -> tuple[socket.socket, list[int]]:
    """A client that sends `count` queries for the big answer in a row and reads nothing
    yet; the server may stop reading, so what does not go within the time bound stays
    unsent."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)  # little room in our own kernel
    s.settimeout(5)
    s.connect(("127.0.0.1", srv.port))
    ids = [(i * 7919) & 0xFFFF for i in range(count)]
    wire = bytearray(dns.message.make_query(BIG, "A").to_wire())
    payload = bytearray()
    for qid in ids:
        wire[0:2] = qid.to_bytes(2, "big")
        payload += framed(bytes(wire))
    try:
        s.sendall(payload)
    except TimeoutError:
        pass  # the server stopped reading us: that is the point
    return s, ids


def test_slow_loris_is_closed_after_the_idle_timeout_while_others_are_answered(idle1: ServerProcess) -> None:
    """A message trickled one byte at a time must complete within the idle timeout: bytes
    are not progress, or 1,024 such clients hold every connection slot."""
    normal = socket.create_connection(("127.0.0.1", idle1.port), timeout=3)
    loris = socket.create_connection(("127.0.0.1", idle1.port), timeout=3)
    loris.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    start = time.monotonic()
    closed_after = None
    try:
        loris.sendall(b"\xff\xff")  # a 65,535-byte message announced, never finished
        for i in range(20):  # 6 s at most
            try:
                loris.send(b"x")
            except (BrokenPipeError, ConnectionResetError):
                pass
            q = dns.message.make_query(NAME, "A")
            normal.sendall(framed(q.to_wire()))
            r = dns.message.from_wire(read_message(normal))
            assert r.id == q.id and r.answer, f"the ordinary client was not answered (round {i})"
            if tcp_state(loris) != ESTABLISHED:
                closed_after = time.monotonic() - start
                break
            time.sleep(0.3)
        assert closed_after is not None, "a client sending a byte every 0.3 s was never disconnected"
        assert closed_after < 1 + 1.5, f"disconnected only after {closed_after:.1f} s"
        assert answered(idle1), "new connections are still served"
    finally:
        loris.close()
        normal.close()


def test_client_that_does_not_read_holds_no_memory_and_gets_its_answers_once_it_reads(idle3: ServerProcess) -> None:
    """Pipelining without reading must stop the server reading that connection (asyncio's
    write buffer high-water mark) instead of queueing every answer in memory; nothing is
    lost, the answers come in order once the client reads."""
    assert idle3.proc is not None
    pid = idle3.proc.pid
    assert answered(idle3, BIG)  # warm up: the big answer compiled, buffers allocated
    before = rss_kb(pid)
    s, ids = pipeline(idle3, PIPELINED)
    try:
        peak = before
        for _ in range(10):  # 1 s
            peak = max(peak, rss_kb(pid))
            assert answered(idle3), "other clients are answered meanwhile"
            time.sleep(0.1)
        grown = (peak - before) / 1024
        assert grown < 8, f"RSS grew by {grown:.1f} MB for a client that reads nothing"
        got = 0
        deadline = time.monotonic() + 60
        s.settimeout(5)
        for qid in ids:
            reply = read_message(s)
            assert reply[:2] == qid.to_bytes(2, "big"), f"answer {got} out of order"
            got += 1
            if time.monotonic() > deadline:
                break
        assert got == len(ids), f"{got} of {len(ids)} answers"
        assert dns.message.from_wire(reply).rcode() == dns.rcode.NOERROR
        assert rss_kb(pid) - before < 8 * 1024
    finally:
        s.close()


def test_client_that_never_reads_is_disconnected_after_the_idle_timeout(idle3: ServerProcess) -> None:
    """A client that takes none of its answers must lose its slot: the server would
    otherwise hold the connection, and its buffered answers, until the client leaves."""
    s, _ = pipeline(idle3, PIPELINED)
    start = time.monotonic()
    try:
        for _ in range(80):  # 8 s at most
            if tcp_state(s) != ESTABLISHED:
                break
            time.sleep(0.1)
        took = time.monotonic() - start
        assert tcp_state(s) != ESTABLISHED, f"still connected {took:.1f} s after pipelining without reading"
        assert took < 3 + 3, f"disconnected only after {took:.1f} s"
        assert answered(idle3)
    finally:
        s.close()


def test_pipelined_answers_beyond_the_write_buffer_all_arrive_for_a_steady_reader(idle3: ServerProcess) -> None:
    """Backpressure must not cost a client that reads: pipelined queries (zone and
    refused names mixed) answered in full, each matched by id, on a connection that
    stays open afterwards."""
    names = [BIG, NAME, "nope.default.svc.cluster.local.", "example.com."]
    queries = [dns.message.make_query(names[i % len(names)], "A", id=i + 1) for i in range(400)]
    with socket.create_connection(("127.0.0.1", idle3.port), timeout=5) as s:
        s.sendall(b"".join(framed(q.to_wire()) for q in queries))
        time.sleep(0.3)  # answers pile up past the high-water mark first
        wires = [read_message(s) for _ in queries]
        q = dns.message.make_query("kubernetes.default.svc.cluster.local.", "A")
        s.sendall(framed(q.to_wire()))
        assert dns.message.from_wire(read_message(s)).answer[0][0].address == "10.96.0.1"
    by_id = {r.id: r for r in map(dns.message.from_wire, wires)}
    for q in queries:
        assert by_id[q.id].question == q.question
