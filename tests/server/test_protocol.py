"""Protocol rules (issue item 4) against a real server: EDNS, truncation, TCP framing,
opcodes, malformed headers, zone transfers, 0x20 case echo."""

from __future__ import annotations

import socket
import struct
import time

import dns.flags
import dns.message
import dns.opcode
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from helpers import DEMO, ServerProcess, query

BIG = "big.team.svc.cluster.local."


def udp_raw(server: ServerProcess, payload: bytes, timeout: float = 1.0) -> bytes | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(payload, ("127.0.0.1", server.port))
        try:
            return s.recv(65535)
        except TimeoutError:
            return None


def tcp_exchange(sock: socket.socket, wires: list[bytes]) -> None:
    sock.sendall(b"".join(struct.pack("!H", len(w)) + w for w in wires))


def tcp_read(sock: socket.socket) -> bytes:
    head = b""
    while len(head) < 2:
        chunk = sock.recv(2 - len(head))
        if not chunk:
            raise ConnectionError("closed")
        head += chunk
    size = struct.unpack("!H", head)[0]
    body = b""
    while len(body) < size:
        chunk = sock.recv(size - len(body))
        if not chunk:
            raise ConnectionError("closed")
        body += chunk
    return body


# ------------------------------------------------------------------ EDNS (RFC 6891)
def test_opt_comes_back_only_when_the_query_had_one(cluster_server: ServerProcess) -> None:
    plain = query(cluster_server, "httpd-svc.default.svc.cluster.local.", "A")
    assert plain.edns == -1
    with_edns = query(cluster_server, "httpd-svc.default.svc.cluster.local.", "A", use_edns=0, payload=4096)
    assert with_edns.edns == 0
    assert with_edns.payload == 1232


def test_edns_version_above_zero_gets_badvers(cluster_server: ServerProcess) -> None:
    r = query(cluster_server, "httpd-svc.default.svc.cluster.local.", "A", use_edns=1)
    assert r.rcode() == dns.rcode.BADVERS
    assert r.edns == 0 and not r.answer


def test_do_bit_is_echoed(cluster_server: ServerProcess) -> None:
    r = query(cluster_server, "httpd-svc.default.svc.cluster.local.", "A", want_dnssec=True)
    assert r.ednsflags & dns.flags.DO


@pytest.mark.parametrize("edns,limit", [(-1, 512), (0, 1232)])
def test_big_answer_over_udp_keeps_as_many_whole_records_as_fit_with_tc(cluster_server: ServerProcess, edns: int, limit: int) -> None:
    """RFC 2181 9 and miekg/dns `Msg.Truncate`: clients that never retry over TCP (musl)
    still get the first addresses."""
    q = dns.message.make_query(BIG, "A", use_edns=edns, payload=4096)
    wire = udp_raw(cluster_server, q.to_wire())
    assert wire is not None and len(wire) <= limit
    r = dns.message.from_wire(wire)
    assert r.flags & dns.flags.TC
    assert r.question[0].name.to_text() == BIG, "TC answers keep the question"
    assert (r.edns == 0) == (edns == 0), "and the OPT record"
    kept = len(r.answer[0])
    assert len(wire) + 16 > limit, f"{kept} records kept, but one more A record (16 bytes) would have fit"
    full = query(cluster_server, BIG, "A", tcp=True)
    assert [rr.address for rr in r.answer[0]] == [rr.address for rr in full.answer[0]][:kept]


def test_udp_size_between_512_and_cap_is_honoured(cluster_server: ServerProcess) -> None:
    q = dns.message.make_query(BIG, "A", use_edns=0, payload=800)
    wire = udp_raw(cluster_server, q.to_wire())
    assert wire is not None and len(wire) <= 800


def test_the_same_query_over_tcp_is_complete(cluster_server: ServerProcess) -> None:
    r = query(cluster_server, BIG, "A", tcp=True)
    assert not r.flags & dns.flags.TC
    assert len(r.answer[0]) == 300


# ------------------------------------------------------------------ TCP (RFC 7766)
def test_tcp_many_and_pipelined_queries_on_one_connection(cluster_server: ServerProcess) -> None:
    names = ["httpd-svc.default.svc.cluster.local.", "my-nginx.default.svc.cluster.local.", "nope.default.svc.cluster.local."]
    queries = [dns.message.make_query(n, "A") for n in names]
    with socket.create_connection(("127.0.0.1", cluster_server.port), timeout=3) as s:
        tcp_exchange(s, [q.to_wire() for q in queries])  # all three in one write
        replies = [dns.message.from_wire(tcp_read(s)) for _ in queries]
        by_id = {r.id: r for r in replies}
        assert set(by_id) == {q.id for q in queries}
        for q in queries:
            assert by_id[q.id].question == q.question
        # the connection stays open for more
        q4 = dns.message.make_query("kubernetes.default.svc.cluster.local.", "A")
        tcp_exchange(s, [q4.to_wire()])
        assert dns.message.from_wire(tcp_read(s)).answer[0][0].address == "10.96.0.1"


def test_tcp_message_split_across_segments(cluster_server: ServerProcess) -> None:
    wire = dns.message.make_query("httpd-svc.default.svc.cluster.local.", "A").to_wire()
    framed = struct.pack("!H", len(wire)) + wire
    with socket.create_connection(("127.0.0.1", cluster_server.port), timeout=3) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(0, len(framed), 7):
            s.sendall(framed[i:i + 7])
            time.sleep(0.01)
        assert dns.message.from_wire(tcp_read(s)).rcode() == dns.rcode.NOERROR


def test_tcp_idle_timeout_and_connection_cap() -> None:
    with ServerProcess("serve", "--manifests", str(DEMO), "--listen", "127.0.0.1:0",
                       "--tcp-idle-timeout", "0.5", "--max-tcp-connections", "2") as srv:
        a = socket.create_connection(("127.0.0.1", srv.port), timeout=3)
        b = socket.create_connection(("127.0.0.1", srv.port), timeout=3)
        time.sleep(0.1)
        c = socket.create_connection(("127.0.0.1", srv.port), timeout=3)
        assert c.recv(10) == b"", "a connection over the cap is closed at once"
        c.close()
        start = time.monotonic()
        assert a.recv(10) == b"", "an idle connection is closed"
        assert time.monotonic() - start < 3
        b.close()
        a.close()
        # after the idle ones went, new connections are served again
        r = dns.query.tcp(dns.message.make_query("httpd-svc.default.svc.cluster.local.", "A"),
                          "127.0.0.1", port=srv.port, timeout=3)
        assert r.rcode() == dns.rcode.NOERROR


# ------------------------------------------------------------------ opcodes and malformed input
def test_other_opcodes_get_notimp(cluster_server: ServerProcess) -> None:
    q = dns.message.make_query("httpd-svc.default.svc.cluster.local.", "A")
    q.set_opcode(dns.opcode.STATUS)
    r = dns.message.from_wire(udp_raw(cluster_server, q.to_wire()))
    assert r.rcode() == dns.rcode.NOTIMP and r.id == q.id


def test_header_with_broken_body_gets_formerr(cluster_server: ServerProcess) -> None:
    q = dns.message.make_query("httpd-svc.default.svc.cluster.local.", "A").to_wire()
    broken = q[:12] + b"\x3fabc"  # a label claiming 63 bytes, then the packet ends
    r = udp_raw(cluster_server, broken)
    assert r is not None and r[:2] == q[:2] and r[3] & 0xF == dns.rcode.FORMERR and r[2] & 0x80


def test_qdcount_zero_gets_formerr(cluster_server: ServerProcess) -> None:
    r = udp_raw(cluster_server, b"\x12\x34\x01\x00" + b"\x00" * 8)
    assert r is not None and r[:2] == b"\x12\x34" and r[3] & 0xF == dns.rcode.FORMERR


def test_shorter_than_a_header_is_dropped_and_the_next_query_answered(cluster_server: ServerProcess) -> None:
    assert udp_raw(cluster_server, b"\x01\x02\x03", timeout=0.3) is None
    r = query(cluster_server, "httpd-svc.default.svc.cluster.local.", "A")
    assert r.rcode() == dns.rcode.NOERROR


def test_responses_are_never_answered(cluster_server: ServerProcess) -> None:
    q = dns.message.make_query("httpd-svc.default.svc.cluster.local.", "A")
    q.flags |= dns.flags.QR
    assert udp_raw(cluster_server, q.to_wire(), timeout=0.3) is None


@pytest.mark.parametrize("qtype", ["AXFR", "IXFR"])
def test_zone_transfers_are_refused(cluster_server: ServerProcess, qtype: str) -> None:
    r = query(cluster_server, "cluster.local.", qtype, tcp=True) if qtype == "AXFR" else \
        query(cluster_server, "cluster.local.", qtype)
    assert r.rcode() == dns.rcode.REFUSED


def test_names_outside_the_zone_are_refused_without_aa(cluster_server: ServerProcess) -> None:
    r = query(cluster_server, "example.com.", "A")
    assert r.rcode() == dns.rcode.REFUSED and not r.flags & dns.flags.AA


def test_chaos_class_is_refused(cluster_server: ServerProcess) -> None:
    q = dns.message.make_query("version.bind.", "TXT", rdclass="CH")
    r = dns.message.from_wire(udp_raw(cluster_server, q.to_wire()))
    assert r.rcode() == dns.rcode.REFUSED


# ------------------------------------------------------------------ case (RFC 4343, 0x20)
@pytest.mark.parametrize("tcp", [False, True])
def test_question_echoed_byte_for_byte_and_names_match_any_case(cluster_server: ServerProcess, tcp: bool) -> None:
    for name in ("HtTpD-SvC.DeFaUlT.sVc.ClUsTeR.LoCaL.", "httpd-svc.default.svc.cluster.local.",
                 "HTTPD-SVC.DEFAULT.SVC.CLUSTER.LOCAL."):
        q = dns.message.make_query(name, "A")
        wire = q.to_wire()
        if tcp:
            with socket.create_connection(("127.0.0.1", cluster_server.port), timeout=3) as s:
                tcp_exchange(s, [wire])
                reply = tcp_read(s)
        else:
            reply = udp_raw(cluster_server, wire)
        assert reply is not None
        assert reply[12:len(wire)] == wire[12:], "question echoed exactly as sent"
        r = dns.message.from_wire(reply)
        assert r.answer[0][0].address == "10.99.229.179"


def test_rd_flag_is_copied(cluster_server: ServerProcess) -> None:
    q = dns.message.make_query("httpd-svc.default.svc.cluster.local.", "A")
    q.flags &= ~dns.flags.RD
    r = dns.message.from_wire(udp_raw(cluster_server, q.to_wire()))
    assert not r.flags & dns.flags.RD
    q2 = dns.message.make_query("httpd-svc.default.svc.cluster.local.", "A")
    r2 = dns.message.from_wire(udp_raw(cluster_server, q2.to_wire()))
    assert r2.flags & dns.flags.RD


def test_ipv6_listener_answers(cluster_server: ServerProcess) -> None:
    r = query(cluster_server, "my-dual-service.default.svc.cluster.local.", "AAAA", host="::1")
    assert r.answer[0][0].address == "fd00:10:96::4d0c"
    r = query(cluster_server, "my-dual-service.default.svc.cluster.local.", "AAAA", host="::1", tcp=True)
    assert r.answer[0][0].address == "fd00:10:96::4d0c"
