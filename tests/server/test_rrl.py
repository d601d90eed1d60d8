"""Response-rate limiting against real `clusterdns serve` and `clusterdns node-cache`
processes on loopback: a flood from one /24 is cut to the limit, a client in another
/24 keeps every answer, slipped answers carry TC=1 and the TCP retry works, nothing is
limited with RRL off, and the metrics count what was limited (only when RRL is on).

Clients bind their own source addresses in 127/8 (all of it is loopback) so each test
floods from a prefix of its own and the module-wide servers' accounts do not mix.
"""

from __future__ import annotations

import re
import select
import socket
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dns.flags
import dns.message
import dns.query
import dns.rcode
import pytest
from prometheus_client.parser import text_string_to_metric_families

from clusterdns.obs import metrics as M
from helpers import ROOT, TEST_CLUSTER, ServerProcess

#: starts clusterdns processes end to end: left out of the quick subset (`-m "not slow"`)
pytestmark = pytest.mark.slow

LIMIT = 20  # answers per second per prefix
FLOOD = 400  # queries the flooder sends, at ten times the limit
NAME = "db.team.svc.cluster.local."
RRL_FLAGS = ("--rrl-responses-per-second", str(LIMIT), "--rrl-slip", "2")
RRL_FAMILIES = ("coredns_rrl_responses_exceeded", "clusterdns_rrl_responses", "clusterdns_rrl_table_entries")


@dataclass
class Tally:
    full: int = 0  # answers with records or an rcode, TC clear
    tc: int = 0  # slipped: TC=1, nothing in them
    seconds: float = 0.0

    def bound(self) -> float:
        """Most full answers a limiter can let through: one second's burst plus the rate."""
        return LIMIT * (self.seconds + 1)


def client(source: str) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((source, 0))
    s.setblocking(False)
    return s


def drain(sock: socket.socket, tally: Tally) -> None:
    while True:
        try:
            reply = sock.recv(4096)
        except BlockingIOError:
            return
        if reply[2] & 0x02:
            assert reply[6:12] == bytes(6), "a slipped answer carries no records"
            tally.tc += 1
        else:
            tally.full += 1


def flood(port: int, source: str, names: list[str], rate: float = 10 * LIMIT,
          other: str | None = None, every: int = 20) -> tuple[Tally, Tally, int]:
    """Send one query per name from `source` at `rate` per second; with `other`, a second
    client asks NAME every `every` steps (a tenth of the limit at the default rate).
    Returns (flooder's tally, other's tally, how many the other sent). Bounded: the
    queries are counted and the wait for late answers is 1 s."""
    a = client(source)
    b = client(other) if other else None
    ta, tb, asked = Tally(), Tally(), 0
    wires = [dns.message.make_query(n, "A").to_wire() for n in names]
    other_wire = dns.message.make_query(NAME, "A").to_wire()
    socks = [a] + ([b] if b else [])
    started = time.monotonic()
    try:
        for i, wire in enumerate(wires):
            a.sendto(wire, ("127.0.0.1", port))
            if b is not None and i % every == 0:
                b.sendto(other_wire, ("127.0.0.1", port))
                asked += 1
            deadline = started + (i + 1) / rate
            while (left := deadline - time.monotonic()) > 0:
                ready, _, _ = select.select(socks, [], [], left)
                for s in ready:
                    drain(s, ta if s is a else tb)
        ta.seconds = time.monotonic() - started
        end = time.monotonic() + 1.0
        while (left := end - time.monotonic()) > 0:
            ready, _, _ = select.select(socks, [], [], left)
            for s in ready:
                drain(s, ta if s is a else tb)
    finally:
        for s in socks:
            s.close()
    return ta, tb, asked


def scrape(server: ServerProcess) -> dict[str, list]:
    m = re.search(r"metrics on \S+?:(\d+)/metrics", server.output())
    assert m, server.output()
    with urllib.request.urlopen(f"http://127.0.0.1:{m.group(1)}/metrics", timeout=5) as r:
        text = r.read().decode()
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


@pytest.fixture(scope="module")
def limited() -> Iterator[ServerProcess]:
    with ServerProcess("serve", "--manifests", str(TEST_CLUSTER), "--listen", "127.0.0.1:0",
                       "--metrics", "127.0.0.1:0", *RRL_FLAGS) as srv:
        yield srv


@pytest.fixture(scope="module")
def unlimited() -> Iterator[ServerProcess]:
    with ServerProcess("serve", "--manifests", str(TEST_CLUSTER), "--listen", "127.0.0.1:0",
                       "--metrics", "127.0.0.1:0") as srv:
        yield srv


def test_a_flood_from_one_prefix_is_cut_to_the_limit_and_another_prefix_keeps_every_answer(
        limited: ServerProcess) -> None:
    mine, other, asked = flood(limited.port, "127.0.2.1", [NAME] * FLOOD, other="127.0.3.1")
    assert mine.full <= mine.bound() < FLOOD / 2, (mine, "without a limiter every query is answered")
    assert mine.full >= LIMIT // 2, mine  # the burst does go out
    limited_answers = FLOOD - mine.full
    assert mine.tc >= limited_answers // 2 - 10, (mine, "slip 2: every second limited answer is TC=1")
    assert other.full == asked and other.tc == 0, (other, asked)


def test_clients_in_the_same_slash_24_share_the_budget(limited: ServerProcess) -> None:
    """127.0.8.1 floods; 127.0.8.77, same /24, asking at a tenth of the limit, is limited too."""
    _, neighbour, asked = flood(limited.port, "127.0.8.1", [NAME] * FLOOD, other="127.0.8.77")
    assert neighbour.full < asked / 2, (neighbour, asked)


def test_a_slipped_answer_has_tc_set_and_the_retry_over_tcp_is_answered(limited: ServerProcess) -> None:
    source = "127.0.4.1"
    q = dns.message.make_query(NAME, "A")
    tc = None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((source, 0))
        s.settimeout(0.2)
        for _ in range(3 * LIMIT):  # bounded: the limit is passed after LIMIT of them
            s.sendto(q.to_wire(), ("127.0.0.1", limited.port))
            try:
                r = dns.message.from_wire(s.recv(4096))
            except TimeoutError:
                continue  # dropped
            if r.flags & dns.flags.TC:
                tc = r
                break
    assert tc is not None, "no TC=1 answer in three seconds' worth of queries"
    assert tc.id == q.id and tc.question == q.question and not tc.answer and tc.rcode() == dns.rcode.NOERROR
    for _ in range(2 * LIMIT):  # TCP is never limited, from the same limited prefix
        r = dns.query.tcp(q, "127.0.0.1", port=limited.port, source=source, timeout=3)
        assert not r.flags & dns.flags.TC and sorted(rd.address for rrs in r.answer for rd in rrs)


def test_the_metrics_count_limited_answers_by_server(limited: ServerProcess) -> None:
    flood(limited.port, "127.0.9.1", [NAME] * (4 * LIMIT), rate=4 * LIMIT)
    fam = scrape(limited)
    server = f"dns://127.0.0.1:{limited.port}"
    exceeded = {s.labels["server"]: s.value for s in fam["coredns_rrl_responses_exceeded"]
                if s.name.endswith("_total")}
    actions = {(s.labels["server"], s.labels["action"]): s.value for s in fam["clusterdns_rrl_responses"]
               if s.name.endswith("_total")}
    assert actions[(server, "dropped")] > 0 and actions[(server, "slipped")] > 0
    assert exceeded[server] == actions[(server, "dropped")] + actions[(server, "slipped")]
    table = fam["clusterdns_rrl_table_entries"][0].value
    # one account per client /24 this module's tests used (127.0.{2,3,4,8,9}.x, 127.0.0.x):
    # more would mean accounts per address or per answer
    assert 1 <= table <= 6
    assert "rrl" in {s.labels["name"] for s in fam["coredns_plugin_enabled"]}


def test_with_rrl_off_nothing_is_limited_and_no_rrl_metric_is_exported(unlimited: ServerProcess) -> None:
    mine, _, _ = flood(unlimited.port, "127.0.5.1", [NAME] * FLOOD)
    assert mine.full == FLOOD and mine.tc == 0, mine
    fam = scrape(unlimited)
    assert not set(RRL_FAMILIES) & set(fam), "RRL metrics appear only while RRL is on"
    assert "rrl" not in {s.labels["name"] for s in fam["coredns_plugin_enabled"]}


def test_rrl_and_its_metrics_are_documented_in_the_docs_and_the_metric_list() -> None:
    security = (ROOT / "docs" / "security.md").read_text()
    assert re.search(r"^#+ Response-rate limiting", security, re.M), "docs/security.md explains RRL"
    metrics = (ROOT / "docs" / "metrics.md").read_text()
    for name in ("coredns_rrl_responses_exceeded_total", "clusterdns_rrl_responses_total",
                 "clusterdns_rrl_table_entries"):
        assert name in M.DOCUMENTED and name in metrics and name in security, name


def test_node_cache_limits_forwarded_answers_and_cache_hits_per_prefix() -> None:
    """Every flood query is a new name: a cache miss forwarded to the cluster DNS, whose
    answer is sent later; the second client's are cache hits after the first."""
    with ServerProcess("serve", "--manifests", str(TEST_CLUSTER), "--listen", "127.0.0.1:0") as cluster, \
            ServerProcess("node-cache", "--listen", "127.0.0.1:0", "--health", "127.0.0.1:0",
                          "--metrics", "127.0.0.1:0", "--cluster-dns", f"127.0.0.1:{cluster.port}",
                          "--upstream", f"127.0.0.1:{cluster.port}", "--no-loop-detect", *RRL_FLAGS) as nc:
        names = [f"n{i}.team.svc.cluster.local." for i in range(FLOOD)]
        mine, other, asked = flood(nc.port, "127.0.6.1", names, other="127.0.7.1")
        assert mine.full <= mine.bound() < FLOOD / 2, mine
        assert mine.tc > 0, mine
        assert other.full == asked and other.tc == 0, (other, asked)
        fam = scrape(nc)
        exceeded = sum(s.value for s in fam["coredns_rrl_responses_exceeded"] if s.name.endswith("_total"))
        assert exceeded >= FLOOD - mine.full - 10  # all it did not answer in full (a few may be in flight)


def test_a_reload_turns_rrl_on_and_off(tmp_path: Path) -> None:
    """SIGHUP with `rrl:` changed in the file swaps the limiter in, then out again."""
    import signal

    cfg = tmp_path / "clusterdns.yaml"
    cfg.write_text(f"manifests: [{TEST_CLUSTER}]\nlisten: ['127.0.0.1:0']\n")
    with ServerProcess("serve", "--config", str(cfg)) as srv:
        assert srv.proc is not None

        def reload(text: str, count: int) -> None:
            cfg.write_text(text)
            srv.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
            deadline = time.monotonic() + 10
            while srv.output().count("config reloaded") < count and time.monotonic() < deadline:
                time.sleep(0.05)
            assert srv.output().count("config reloaded") == count, srv.output()

        base = f"manifests: [{TEST_CLUSTER}]\nlisten: ['127.0.0.1:0']\n"
        mine, _, _ = flood(srv.port, "127.0.10.1", [NAME] * (4 * LIMIT), rate=4 * LIMIT)
        assert mine.full == 4 * LIMIT, mine
        reload(base + f"rrl: {{responses_per_second: {LIMIT}}}\n", 1)
        mine, _, _ = flood(srv.port, "127.0.11.1", [NAME] * FLOOD)
        assert mine.full <= mine.bound() < FLOOD / 2 and mine.tc > 0, mine
        reload(base, 2)
        mine, _, _ = flood(srv.port, "127.0.11.1", [NAME] * (4 * LIMIT), rate=4 * LIMIT)
        assert mine.full == 4 * LIMIT, (mine, "off again: the prefix in debt is answered")
