"""The response-rate limiter on its own (server/rrl.py), with an injected clock: credit,
debt floored at the window, slip ratio, client prefixes, the bounded table, the slip
answer's shape, and a UDP listener in the test's event loop doing what it says."""

from __future__ import annotations

import socket
import struct

import dns.flags
import dns.message
import dns.rrset
import pytest

from clusterdns.app import lifecycle
from clusterdns.app.cluster import build_cluster
from clusterdns.kube.manifests import load_manifests
from clusterdns.server.handler import Handler
from clusterdns.server.rrl import ANSWER, DROP, RRL, SLIP, limiter, truncated
from clusterdns.settings.schema import ServeConfig
from helpers import TEST_CLUSTER, UDPClient, udp_listener

KEY = b"4\x0a\x00\x00"


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def sockaddr(host: str, port: int = 5353) -> bytes:
    """A kernel sockaddr as recvmmsg leaves it (family in host order), 32 bytes."""
    if ":" in host:
        raw = struct.pack("=H", socket.AF_INET6) + struct.pack("!HI", port, 0) + socket.inet_pton(socket.AF_INET6, host)
        raw += bytes(4)
    else:
        raw = struct.pack("=H", socket.AF_INET) + struct.pack("!H", port) + socket.inet_pton(socket.AF_INET, host)
    return raw.ljust(32, b"\x00")


def verdicts(rrl: RRL, n: int, now: float, key: bytes = KEY) -> list[int]:
    return [rrl.check(key, now) for _ in range(n)]


# ------------------------------------------------------------------ credit and debt


def test_a_new_prefix_gets_a_burst_of_one_seconds_worth_then_is_limited() -> None:
    rrl = RRL(8, slip=0)
    assert verdicts(rrl, 8, 0.0) == [ANSWER] * 8
    assert verdicts(rrl, 5, 0.0) == [DROP] * 5


def test_credit_comes_back_at_the_rate() -> None:
    rrl = RRL(8, slip=0)
    verdicts(rrl, 8, 0.0)  # burst spent, balance 0
    assert verdicts(rrl, 3, 0.375) == [ANSWER, ANSWER, ANSWER]
    assert rrl.check(KEY, 0.375) == DROP


def test_credit_is_capped_at_one_second_however_long_the_prefix_was_quiet() -> None:
    rrl = RRL(8, slip=0)
    rrl.check(KEY, 0.0)
    assert verdicts(rrl, 11, 3600.0).count(ANSWER) == 8


def test_a_flooder_stays_limited_while_it_floods_at_ten_times_the_rate() -> None:
    rrl = RRL(8, slip=0)  # costs of 1/8 s: exact in binary, no rounding in the sums
    answered = sum(v == ANSWER for t in range(240) for v in verdicts(rrl, 10, t * 0.125))  # 80/s for 30 s
    assert answered == 8  # the burst; limited answers cost credit too, so the debt never clears


def test_debt_is_floored_at_the_window_so_a_flood_that_stops_is_answered_again() -> None:
    rrl = RRL(8, window=15, slip=0)
    verdicts(rrl, 100000, 0.0)  # a huge flood at one instant: the debt stops at 15 s
    assert rrl.table[KEY][0] == -15.0
    assert rrl.check(KEY, 15.0) == DROP  # debt just cleared, this one costs 1/8 s of credit
    rrl2 = RRL(8, window=15, slip=0)
    verdicts(rrl2, 100000, 0.0)
    assert rrl2.check(KEY, 15.125) == ANSWER


def test_prefixes_have_separate_budgets() -> None:
    rrl = RRL(2, slip=0)
    a, b = rrl.prefix(sockaddr("10.0.0.1")), rrl.prefix(sockaddr("10.0.1.1"))
    assert verdicts(rrl, 3, 0.0, a) == [ANSWER, ANSWER, DROP]
    assert verdicts(rrl, 2, 0.0, b) == [ANSWER, ANSWER]


# ------------------------------------------------------------------ slip ratio


@pytest.mark.parametrize("slip,expected", [
    (0, [DROP] * 6),
    (1, [SLIP] * 6),
    (2, [DROP, SLIP] * 3),
    (3, [DROP, DROP, SLIP] * 2),
])
def test_every_nth_limited_answer_slips(slip: int, expected: list[int]) -> None:
    rrl = RRL(1, slip=slip)
    assert rrl.check(KEY, 0.0) == ANSWER
    assert verdicts(rrl, 6, 0.0) == expected
    assert sum(rrl.dropped.values()) == expected.count(DROP)
    assert sum(rrl.slipped.values()) == expected.count(SLIP)


# ------------------------------------------------------------------ client prefixes


@pytest.mark.parametrize("a,b,same", [
    ("10.1.2.3", "10.1.2.250", True),
    ("10.1.2.3", "10.1.3.3", False),
    ("2001:db8:0:1::1", "2001:db8:0:ff::9", True),  # one /56
    ("2001:db8:0:1::1", "2001:db8:0:100::1", False),
    ("::ffff:10.1.2.3", "10.1.2.99", True),  # IPv4-mapped on a dual-stack socket
    ("10.1.2.3", "::ffff:10.9.2.3", False),
])
def test_clients_in_one_prefix_share_an_account(a: str, b: str, same: bool) -> None:
    rrl = RRL(10)
    assert (rrl.prefix(sockaddr(a)) == rrl.prefix(sockaddr(b))) is same
    assert rrl.prefix((a, 53)) == rrl.prefix(sockaddr(a)), "PlainIO's tuples key as recvmmsg's sockaddrs"


def test_prefix_lengths_that_are_not_whole_bytes_are_masked() -> None:
    rrl = RRL(10, ipv4_prefix_length=20, ipv6_prefix_length=33)
    assert rrl.prefix(("10.1.16.1", 53)) == rrl.prefix(("10.1.31.255", 53))
    assert rrl.prefix(("10.1.16.1", 53)) != rrl.prefix(("10.1.32.1", 53))
    assert rrl.prefix(("2001:db8:7fff::1", 53)) == rrl.prefix(("2001:db8::1", 53))
    assert rrl.prefix(("2001:db8:8000::1", 53)) != rrl.prefix(("2001:db8::1", 53))


def test_ipv4_and_ipv6_prefixes_of_the_same_bytes_do_not_collide() -> None:
    rrl = RRL(10, ipv4_prefix_length=32, ipv6_prefix_length=32)
    assert rrl.prefix(("10.1.2.3", 53)) != rrl.prefix(("a01:203::", 53))


# ------------------------------------------------------------------ bounded table


def test_the_table_never_grows_past_its_size_and_evicts_the_least_recently_seen() -> None:
    rrl = RRL(1, max_table_size=3, slip=0)
    keep = rrl.prefix(("192.0.2.1", 53))
    rrl.check(keep, 0.0)
    for i in range(1000):  # spoofed sources from 1000 prefixes
        rrl.check(rrl.prefix((f"10.{i // 256}.{i % 256}.1", 53)), 0.0)
        if i % 2 == 0:
            rrl.check(keep, 0.0)  # a real client keeps asking: stays in the table
        assert len(rrl.table) <= 3
    assert keep in rrl.table and rrl.table[keep][0] < 0  # still in debt: not reset by the flood


# ------------------------------------------------------------------ the slip answer


def test_the_slip_answer_is_the_header_and_question_with_tc_set() -> None:
    q = dns.message.make_query("Kubernetes.default.svc.cluster.local.", "A", use_edns=0)
    reply = dns.message.make_response(q)
    reply.answer = [dns.rrset.from_text(q.question[0].name, 5, "IN", "A", "10.96.0.1")]
    tc = dns.message.from_wire(truncated(reply.to_wire()))
    assert tc.id == q.id and tc.flags & dns.flags.TC and tc.flags & dns.flags.QR
    assert tc.question == q.question and not tc.answer and not tc.authority and tc.edns == -1
    assert tc.rcode() == reply.rcode()


def test_the_slip_answer_of_a_reply_without_a_question_is_the_header_alone() -> None:
    wire = b"\x12\x34\x81\x80" + bytes(8)
    assert truncated(wire) == b"\x12\x34\x83\x80" + bytes(8)


def test_limiter_is_off_at_rate_zero_and_kept_or_replaced_on_reload() -> None:
    assert limiter(None) is None and limiter({"responses_per_second": 0}) is None
    with pytest.raises(ValueError):
        RRL(0)
    first = limiter({"responses_per_second": 5.0})
    assert first is not None
    first.check(KEY, 0.0)
    assert limiter({"responses_per_second": 5.0}, first) is first  # table kept
    first.dropped[0] = 7
    second = limiter({"responses_per_second": 9.0}, first)
    assert second is not first and second is not None and second.dropped == {0: 7}  # counters monotonic


# ------------------------------------------------------------------ a listener limiting


@pytest.fixture
def handler() -> Handler:
    store, handler = build_cluster(ServeConfig(manifests=[str(TEST_CLUSTER)]))
    store.load(load_manifests([str(TEST_CLUSTER)])[0])
    return handler


@pytest.mark.parametrize("reader", ["mmsg", "plain", "logged"])
async def test_listener_answers_the_burst_then_slips_every_second_and_drops_the_rest(handler: Handler, reader: str) -> None:
    """A frozen clock: 5 answers, then of the 15 limited every 2nd slips (7) and 8 are
    dropped -- exactly, in every reader that can be on (batched, one-by-one, query log)."""
    listener = udp_listener(handler, io="plain" if reader == "plain" else "mmsg")
    rrl = RRL(5, slip=2, clock=Clock())
    listener.set_rrl(rrl)
    if reader == "logged":
        listener.set_query_log(lifecycle.query_log(True, 1000))
    assert listener._reader == (listener._read_logged if reader == "logged" else listener._read_limited)
    client = UDPClient(listener.sockname())
    q = dns.message.make_query("db.team.svc.cluster.local.", "A")
    replies = []
    try:
        for _ in range(20):
            reply = await client.ask(q.to_wire(), timeout=0.1)
            if reply is not None:
                replies.append(dns.message.from_wire(reply))
    finally:
        client.close()
        listener.close()
    full = [r for r in replies if not r.flags & dns.flags.TC]
    tc = [r for r in replies if r.flags & dns.flags.TC]
    assert len(full) == 5 and all(r.answer for r in full)
    assert len(tc) == 7 and not any(r.answer for r in tc)
    assert rrl.slipped == {0: 7} and rrl.dropped == {0: 8}


async def test_turning_rrl_off_puts_the_hot_path_back(handler: Handler) -> None:
    listener = udp_listener(handler)
    try:
        assert listener._reader == listener._read
        listener.set_rrl(RRL(5))
        assert listener._reader == listener._read_limited
        listener.set_rrl(None)
        assert listener._reader == listener._read
    finally:
        listener.close()

