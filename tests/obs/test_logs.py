"""Logs: text and JSON lines, bursts of repeated errors collapsed with a count, and the
query log in CoreDNS's common format (exact line, parse back, sampling)."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator

import dns.flags
import dns.message
import dns.name
import pytest

from clusterdns.obs import logs as L


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def out() -> Iterator[io.StringIO]:
    buf = io.StringIO()
    yield buf
    L.reset()  # other tests' caplog must see clusterdns records again


def lines(buf: io.StringIO) -> list[str]:
    return buf.getvalue().splitlines()


def test_text_lines(out: io.StringIO) -> None:
    L.setup("info", "text", 10.0, out)
    logging.getLogger("clusterdns").info("serving %s", "cluster.local")
    logging.getLogger("clusterdns.forward").debug("not shown at info")
    assert len(lines(out)) == 1
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z \[INFO\] clusterdns: serving cluster\.local",
                        lines(out)[0])


def test_json_lines(out: io.StringIO) -> None:
    L.setup("debug", "json", 10.0, out)
    log = logging.getLogger("clusterdns.kube")
    log.debug("listed %d services", 3)
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("watch failed")
    first, second = (json.loads(x) for x in lines(out))
    assert first["level"] == "debug" and first["logger"] == "clusterdns.kube" and first["msg"] == "listed 3 services"
    assert first["ts"].endswith("Z")
    assert second["level"] == "error" and "ValueError: boom" in second["exc"]


def test_setup_again_replaces_the_handler(out: io.StringIO) -> None:
    L.setup("info", "text", 10.0, io.StringIO())
    L.setup("warning", "text", 10.0, out)
    logging.getLogger("clusterdns").info("hidden")
    logging.getLogger("clusterdns").warning("shown once")
    assert lines(out) == [lines(out)[0]] and lines(out)[0].endswith("shown once")


def test_repeated_errors_become_one_line_with_a_count(out: io.StringIO) -> None:
    clock = Clock()
    consolidator = L.setup("info", "text", 10.0, out)
    consolidator.clock = clock
    log = logging.getLogger("clusterdns.forward")
    for _ in range(100):
        log.warning("upstream %s timed out", "10.0.0.1")
        clock.now += 0.05
    log.warning("upstream %s timed out", "10.0.0.2")  # another problem: its own line
    log.error("another kind")
    log.info("info is never collapsed")
    log.info("info is never collapsed")
    assert len(lines(out)) == 5
    consolidator.flush()  # window not over yet: nothing
    assert len(lines(out)) == 5
    clock.now += 10
    consolidator.flush()
    assert lines(out)[-1].endswith("[WARNING] clusterdns.forward: 99 more like this within 10s: "
                                   "upstream 10.0.0.1 timed out")
    assert consolidator.suppressed == 99


def test_a_new_burst_after_the_window_writes_the_summary_first(out: io.StringIO) -> None:
    clock = Clock()
    consolidator = L.setup("info", "text", 5.0, out)
    consolidator.clock = clock
    log = logging.getLogger("clusterdns")
    for _ in range(3):
        log.error("disk full")
    clock.now += 6
    log.error("disk full")
    assert [x.split("] ", 1)[1] for x in lines(out)] == [
        "clusterdns: disk full", "clusterdns: 2 more like this within 5s: disk full", "clusterdns: disk full"]


def test_window_zero_logs_every_error(out: io.StringIO) -> None:
    L.setup("info", "text", 0, out)
    for _ in range(5):
        logging.getLogger("clusterdns").error("same")
    assert len(lines(out)) == 5


def test_summary_in_json_carries_the_count(out: io.StringIO) -> None:
    consolidator = L.setup("info", "json", 10.0, out)
    for _ in range(4):
        logging.getLogger("clusterdns").warning("x")
    consolidator.flush_all()
    summary = json.loads(lines(out)[-1])
    assert summary["repeated"] == 3 and summary["msg"].startswith("3 more like this")


# ----------------------------------------------------------------------- query log


def test_common_format_is_coredns_s() -> None:
    """The example line of CoreDNS's log plugin README (operators.md 1.8), field by field."""
    e = L.QueryEntry("::1", 50759, 29008, "A", "IN", "example.org.", "udp", 41, False, 4096, "NOERROR",
                     "qr,rd,ra,ad", 68, 0.037990251)
    assert e.line() == '[::1]:50759 - 29008 "A IN example.org. udp 41 false 4096" NOERROR qr,rd,ra,ad 68 0.037990251s'
    assert L.parse_common("[INFO] " + e.line()) == {**e.fields(), "class": "IN"}


def test_entry_from_wire_and_back() -> None:
    q = dns.message.make_query("Web.Default.svc.cluster.local.", "AAAA", use_edns=0, want_dnssec=True, payload=1232)
    q.id = 4242
    r = dns.message.make_response(q)
    r.flags |= dns.flags.AA
    r.set_rcode(3)
    qw, rw = q.to_wire(), r.to_wire()
    e = L.entry(qw, rw, ("10.1.2.3", 40000), "udp", 0.0000125)
    assert e is not None
    assert e.line() == (f'10.1.2.3:40000 - 4242 "AAAA IN web.default.svc.cluster.local. udp {len(qw)} true 1232" '
                        f'NXDOMAIN qr,aa,rd {len(rw)} 0.0000125s')
    parsed = L.parse_common(e.line())
    assert parsed is not None and parsed["name"] == "web.default.svc.cluster.local." and parsed["do"] is True


def test_entry_without_edns_over_tcp_and_odd_names() -> None:
    q = dns.message.make_query(dns.name.from_text(r"a\032b\"c.example."), "TYPE999")
    e = L.entry(q.to_wire(), dns.message.make_response(q).to_wire(), ("::1", 5), "tcp", 1.0)
    assert e is not None and e.bufsize == 65535 and e.do is False and e.type == "TYPE999"
    assert e.name == r"a\032b\034c.example." and " " not in e.name
    assert L.parse_common(e.line())["name"] == e.name


def test_entry_is_none_without_a_question() -> None:
    assert L.entry(b"\x00" * 12, b"\x00" * 12, ("::1", 1), "udp", 0.0) is None
    assert L.entry(b"\x00\x01\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\xff", b"\x00" * 12, ("::1", 1), "udp", 0.0) is None


def test_sampling_logs_one_in_n(out: io.StringIO) -> None:
    L.setup("info", "text", 10.0, out)
    ql = L.QueryLog(sample=10)
    q = dns.message.make_query("a.example.", "A")
    qw, rw = q.to_wire(), dns.message.make_response(q).to_wire()
    for _ in range(100):
        if ql.wanted():
            ql.write(qw, rw, ("127.0.0.1", 1), "udp", 0.001)
    assert ql.written == 10 and len(lines(out)) == 10
    assert all(L.parse_common(x) is not None and "[INFO] clusterdns.query:" in x for x in lines(out))


def test_query_log_in_json_has_the_fields(out: io.StringIO) -> None:
    L.setup("info", "json", 10.0, out)
    q = dns.message.make_query("a.example.", "MX")
    L.QueryLog().write(q.to_wire(), dns.message.make_response(q).to_wire(), ("127.0.0.1", 9), "udp", 0.5)
    rec = json.loads(lines(out)[0])
    assert rec["logger"] == "clusterdns.query" and rec["type"] == "MX" and rec["rcode"] == "NOERROR"
    assert L.parse_common(rec["msg"])["duration"] == 0.5
