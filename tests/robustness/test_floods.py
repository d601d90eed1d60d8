"""Floods against the running server: real names stay answered, memory stays flat.

A random-subdomain flood (never-repeated names under an existing namespace, what
ndots:5 search paths and attacks both look like) and a junk flood (names of ~2,000
one-byte labels, past the 255-byte limit) are sent while real names are asked. Their
rates and latencies are the benchmark's to judge (bench/flood.py); here: every real
name keeps its right answer (a resolver's retries allowed), the junk gets FORMERR or
nothing, and the server's memory does not grow with the names asked (nothing is kept
per question).
"""

from __future__ import annotations

import secrets
import socket
import struct

import dns.message
import dns.rcode
import dns.rdatatype

from helpers import ServerProcess

FLOOD = 100_000  # never-repeated names: kept per question, they would cost tens of MB
JUNK = 5_000
BURST = 2_000  # flood datagrams between two rounds of real questions
REAL = [("httpd-svc.default.svc.cluster.local.", "A"), ("db.team.svc.cluster.local.", "A"),
        ("_pg._tcp.db.team.svc.cluster.local.", "SRV")]


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def wire_query(labels: list[bytes], qtype: int = 1) -> bytes:
    name = b"".join(bytes((len(x),)) + x for x in labels) + b"\x00"
    return secrets.token_bytes(2) + b"\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + name + struct.pack("!HH", qtype, 1)


def random_subdomain() -> bytes:
    return wire_query([secrets.token_hex(6).encode(), b"default", b"svc", b"cluster", b"local"])


JUNK_QUERY = wire_query([b"a"] * 2000)


def ask_real(port: int, expected: dict[tuple[str, str], set[str]]) -> None:
    """Each real question once, with up to 5 tries of 1 s (a stub resolver's patience)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(1.0)
        for name, rdtype in REAL:
            q = dns.message.make_query(name, rdtype)
            for _ in range(5):
                s.sendto(q.to_wire(), ("127.0.0.1", port))
                try:
                    while True:  # skip a late answer to an earlier try
                        r = dns.message.from_wire(s.recv(4096))
                        if r.id == q.id:
                            break
                except TimeoutError:
                    continue
                break
            else:
                raise AssertionError(f"{name} {rdtype} not answered in 5 tries during the flood")
            assert r.rcode() == dns.rcode.NOERROR, (name, r)
            got = {rd.to_text() for rrset in r.answer for rd in rrset}
            assert got == expected[(name, rdtype)], (name, got)


def flood(port: int, packets: list[bytes] | None, count: int, expected: dict[tuple[str, str], set[str]]) -> int:
    """Send `count` flood datagrams (fresh random names when `packets` is None), real
    questions between bursts; returns how many flood answers were read back."""
    answers = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        s.setblocking(False)
        sent = 0
        while sent < count:
            for _ in range(min(BURST, count - sent)):
                data = random_subdomain() if packets is None else packets[sent % len(packets)]
                try:
                    s.sendto(data, ("127.0.0.1", port))
                except BlockingIOError:
                    pass
                sent += 1
            while True:  # read what came back so far (the rest the kernel may drop)
                try:
                    r = s.recv(4096)
                except BlockingIOError:
                    break
                answers += 1
                if packets is not None:
                    assert r[3] & 0x0F == dns.rcode.FORMERR, r[:12]
            ask_real(port, expected)
    return answers


def real_answers(port: int) -> dict[tuple[str, str], set[str]]:
    out = {}
    for name, rdtype in REAL:
        q = dns.message.make_query(name, rdtype)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(2)
            s.sendto(q.to_wire(), ("127.0.0.1", port))
            r = dns.message.from_wire(s.recv(4096))
        out[(name, rdtype)] = {rd.to_text() for rrset in r.answer for rd in rrset}
        assert out[(name, rdtype)], (name, r)
    return out


def test_floods_leave_real_names_answered_and_memory_flat(cluster_server: ServerProcess) -> None:
    assert cluster_server.proc is not None
    pid, port = cluster_server.proc.pid, cluster_server.port
    expected = real_answers(port)
    flood(port, None, 5_000, expected)  # the allocator's steady state first
    before = rss_kb(pid)
    flood(port, None, FLOOD, expected)
    junk_answers = flood(port, [JUNK_QUERY], JUNK, expected)
    grown_mb = (rss_kb(pid) - before) / 1024
    assert grown_mb < 15, f"RSS grew {grown_mb:.1f} MB over {FLOOD:,} never-repeated names and {JUNK:,} junk"
    assert junk_answers > 0, "the junk got no FORMERR at all"
    assert cluster_server.proc.poll() is None
    ask_real(port, expected)

