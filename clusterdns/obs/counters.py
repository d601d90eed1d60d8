"""Query counters as plain ints: what the listeners write on every answer.

Kept apart from `metrics.py` (prometheus_client) so the server imports nothing heavy,
and so a process that serves no /metrics still has the numbers (logs, workers).

Every distinct kind of answer -- (proto, hot path or not, plugin, zone, qtype, rcode,
DO bit, request size, response size) -- is a *traffic class*: one `list[int]` of counts,
one per listen address (slot). A compiled answer keeps references to its classes (by
query size and shape), so the hot path pays one `counts[slot] += 1`, and the size
histograms come out exact without any per-query work. General-path answers are counted
into the same classes and timed with `perf_counter`.
"""

from __future__ import annotations

import bisect
import time
from dataclasses import dataclass

from clusterdns.wire.constants import RRType
from clusterdns.wire.names import Malformed
from clusterdns.wire.question import question_name_end

TIME_BUCKETS: tuple[float, ...] = tuple(0.00025 * 2**i for i in range(16))
#: CoreDNS request/response size buckets (plugin/metrics/vars)
SIZE_BUCKETS: tuple[float, ...] = (0, 100, 200, 300, 400, 511, 1023, 2047, 4095, 8291, 16e3, 32e3, 48e3, 64e3)
#: CoreDNS kubernetes plugin: 1 ms doubling, 20 buckets (to about 9 minutes)
PROGRAMMING_BUCKETS: tuple[float, ...] = tuple(0.001 * 2**i for i in range(20))

#: query types CoreDNS labels by name; the rest are "other" (plugin/metrics/vars/report.go)
MONITORED_TYPES: dict[int, str] = {
    1: "A",
    2: "NS",
    5: "CNAME",
    6: "SOA",
    12: "PTR",
    15: "MX",
    16: "TXT",
    28: "AAAA",
    33: "SRV",
    43: "DS",
    46: "RRSIG",
    47: "NSEC",
    48: "DNSKEY",
    50: "NSEC3",
    65: "HTTPS",
    251: "IXFR",
    252: "AXFR",
    255: "ANY",
}
#: rcode names as miekg/dns prints them (CoreDNS's `rcode` label)
RCODES: dict[int, str] = {
    0: "NOERROR",
    1: "FORMERR",
    2: "SERVFAIL",
    3: "NXDOMAIN",
    4: "NOTIMP",
    5: "REFUSED",
    6: "YXDOMAIN",
    7: "YXRRSET",
    8: "NXRRSET",
    9: "NOTAUTH",
    10: "NOTZONE",
}

#: traffic classes kept with exact sizes; beyond, sizes are rounded to their bucket so a
#: flood of odd names cannot grow memory (the counts stay exact, `_sum` becomes approximate)
MAX_CLASSES = 10_000

#: zone label of queries that never reach a zone (CoreDNS: no closing dot, never a real zone)
DROPPED = "dropped"

_OPT_TYPE = int(RRType.OPT).to_bytes(2, "big")  # in wire form, as a query's OPT record carries it

HEADER = 12


def type_label(qtype: int) -> str:
    return MONITORED_TYPES.get(qtype, "other")


def rcode_label(rcode: int) -> str:
    return RCODES.get(rcode, f"RCODE{rcode}")


def server_label(host: str, port: int) -> str:
    """CoreDNS's `server` label: `dns://:53` when bound to every address, else with the IP."""
    if host in ("", "0.0.0.0", "::"):
        return f"dns://:{port}"
    return f"dns://[{host}]:{port}" if ":" in host else f"dns://{host}:{port}"


def _bucket_index(bounds: tuple[float, ...], value: float) -> int:
    """Index of the first bucket whose upper bound is >= value (len(bounds) = +Inf)."""
    return bisect.bisect_left(bounds, value)


# --------------------------------------------------------------------------- wire peeks


def question_info(query: bytes) -> tuple[int, bool] | None:
    """(qtype, DO bit) of a query's question; None when it cannot be read.

    The question's name is walked by the one query parser's walker (bounded, typed
    errors); the DO bit is read from an OPT right after the question, the shape every
    resolver sends. The general path calls it once per answer, so no object is built.
    """
    if len(query) < HEADER + 5 or query[4:6] == b"\x00\x00":
        return None
    try:
        i = question_name_end(query)
    except Malformed:
        return None
    n = len(query)
    if i + 4 > n:
        return None
    qtype = (query[i] << 8) | query[i + 1]
    do = False
    opt = i + 4
    if (
        query[10:12] == b"\x00\x01"
        and query[6:10] == b"\x00\x00\x00\x00"
        and opt + 11 <= n
        and query[opt] == 0
        and query[opt + 1 : opt + 3] == _OPT_TYPE
    ):
        do = bool(query[opt + 7] & 0x80)
    return qtype, do


# --------------------------------------------------------------------------- counters


@dataclass(slots=True)
class Listener:
    """One listen address: the `server` and `family` labels of its slot."""

    server: str
    family: str  # "1" IPv4, "2" IPv6 (CoreDNS's values)


class _Hist:
    """A histogram as plain ints: per-bucket counts (not cumulative) and a sum."""

    __slots__ = ("counts", "sum")

    def __init__(self, n: int) -> None:
        self.counts = [0] * (n + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, bounds: tuple[float, ...], value: float) -> None:
        self.counts[_bucket_index(bounds, value)] += 1
        self.sum += value

    def cumulative(self, bounds: tuple[float, ...]) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        total = 0
        for le, c in zip([*map(_le, bounds), "+Inf"], self.counts, strict=True):
            total += c
            out.append((le, total))
        return out


def _le(bound: float) -> str:
    return repr(float(bound))


ClassKey = tuple[bool, bool, str, str, int, int, bool, int, int]
# (tcp, hot, plugin, zone, qtype, rcode, do, request size, response size)


class QueryStats:
    """Per-process query counters, written by the listeners, read by `DNSCollector`.

    Slots are listen addresses (one UDP and one TCP socket each); counts are kept per
    slot so the `server` and `family` labels are exact.
    """

    def __init__(self) -> None:
        self.listeners: list[Listener] = []
        self.classes: dict[ClassKey, list[int]] = {}
        self.durations: dict[tuple[int, str, int], _Hist] = {}  # (slot, zone, qtype) -> slow-path times
        self.dropped: dict[tuple[int, bool, str], int] = {}  # (slot, tcp, reason) -> packets
        self.hot_seconds = 1e-6  # per hot-path answer; replaced by calibrate_hot_path()

    # -- set-up ----------------------------------------------------------------------

    def add_listener(self, host: str, port: int) -> int:
        """Register a listen address; returns its slot (index into every class's counts)."""
        self.listeners.append(Listener(server_label(host, port), "2" if ":" in host else "1"))
        width = len(self.listeners)
        for counts in self.classes.values():  # in place: table entries hold these lists
            counts.extend([0] * (width - len(counts)))
        return width - 1

    def _width(self) -> int:
        return max(1, len(self.listeners))

    def traffic_class(self, key: ClassKey) -> list[int]:
        """The shared counts of one kind of answer, created on first use."""
        counts = self.classes.get(key)
        if counts is None:
            if len(self.classes) >= MAX_CLASSES:
                tcp, hot, plugin, zone, qtype, rcode, do, req, resp = key
                key = (tcp, hot, plugin, zone, qtype, rcode, do, _round_up(req), _round_up(resp))
                counts = self.classes.get(key)
            if counts is None:
                counts = self.classes[key] = [0] * self._width()
        return counts

    # -- writers ---------------------------------------------------------------------

    def hot_class(
        self, query: bytes, reply: bytes, tcp: bool, plugin: str = "kubernetes", zone: str = "."
    ) -> list[int]:
        """The class a replayed answer counts into (called when it is stored)."""
        info = question_info(query)
        qtype, do = info if info is not None else (0, False)
        return self.traffic_class((tcp, True, plugin, zone, qtype, reply[3] & 0x0F, do, len(query), len(reply)))

    def observe(
        self, slot: int, tcp: bool, query: bytes, reply: bytes, seconds: float, plugin: str, zone: str = "."
    ) -> None:
        """One slow-path answer: counted and timed."""
        # a FORMERR's question is not read again (its type is not known to be there)
        info = question_info(query) if len(reply) > 3 and reply[3] & 0x0F != 1 else None
        qtype, do = info if info is not None else (0, False)
        key = (tcp, False, plugin, zone, qtype, reply[3] & 0x0F if len(reply) > 3 else 2, do, len(query), len(reply))
        counts = self.classes.get(key) or self.traffic_class(key)
        counts[slot] += 1
        dkey = (slot, zone, qtype)
        hist = self.durations.get(dkey)
        if hist is None:
            hist = self.durations[dkey] = _Hist(len(TIME_BUCKETS))
        # `_Hist.observe` inlined: once per forwarded answer, two calls fewer
        hist.counts[bisect.bisect_left(TIME_BUCKETS, seconds)] += 1
        hist.sum += seconds

    def drop(self, slot: int, tcp: bool, reason: str) -> None:
        """A packet answered with nothing: too short, a response, over a limit..."""
        key = (slot, tcp, reason)
        self.dropped[key] = self.dropped.get(key, 0) + 1

    # -- readers ---------------------------------------------------------------------

    def hot_hits(self) -> int:
        return sum(sum(c) for k, c in self.classes.items() if k[1])


def _round_up(size: int) -> int:
    i = _bucket_index(SIZE_BUCKETS, size)
    return int(SIZE_BUCKETS[i]) if i < len(SIZE_BUCKETS) else 65535


def calibrate_hot_path(rounds: int = 2000) -> float:
    """Seconds one hot-path answer takes on this machine: the table lookup, the counter
    and the reply bytes, as `server/udp.py` does them (no socket)."""
    name = b"\x03web\x07default\x03svc\x07cluster\x05local\x00"
    key = b"\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + name + b"\x00\x01\x00\x01"
    table = {key: (b"\x85\x00\x00\x01\x00\x01\x00\x00\x00\x00", b"\x00" * 20, [0])}
    query = b"\x12\x34" + key
    end = len(query) - 4
    get = table.get
    started = time.perf_counter()
    for _ in range(rounds):
        entry = get(query[2:12] + query[12:end].lower() + query[end:])
        entry[2][0] += 1  # type: ignore[index]  # get() of the one key there: never None
        _ = query[:2] + entry[0] + query[12:end] + entry[1]  # type: ignore[index]  # as above
    return (time.perf_counter() - started) / rounds
