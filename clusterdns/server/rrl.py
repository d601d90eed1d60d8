"""Response-rate limiting (RRL) of UDP answers per client network prefix.

Why: a DNS server answering UDP is an amplifier for whoever spoofs a victim's address.
As BIND's and NSD's RRL and CoreDNS's external `rrl` plugin do, answers to one client
prefix (IPv4 /24, IPv6 /56 by default) are limited to `rate` per second; over the limit
most are dropped and every `slip`-th goes out as an empty TC=1 answer, so a real client
behind that prefix retries over TCP (which is never limited: it cannot be spoofed).

Accounting is per prefix only, not per (prefix, name, type) as BIND's: a pod network's
clients share no prefix with an attacker's spoofed sources, and one budget per prefix
also covers floods of random names. Each account is the credit scheme of the RRL papers
and CoreDNS's plugin, in seconds: an answer costs 1/rate; credit comes back with time,
capped at 1 s (a burst of `rate` answers); a prefix in debt is limited, and the debt is
floored at `window` seconds, so a flooder that stops is answered again within `window`.

The table of accounts is an LRU bounded by `max_size`: spoofed sources from many
prefixes evict old accounts instead of growing memory. An evicted prefix starts over
with full credit, so eviction can only fail open, never starve a client.
"""

from __future__ import annotations

import socket
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

ANSWER, SLIP, DROP = 0, 1, 2  # what `check` says to do with one answer
DEFAULTS: dict[str, Any] = {
    "window": 15.0,
    "slip": 2,
    "ipv4_prefix_length": 24,
    "ipv6_prefix_length": 56,
    "max_table_size": 100000,
}  # RRL's keyword defaults, as the config's


def _prefix_cut(bits: int) -> tuple[int, int]:
    """(whole bytes, mask of the next byte) of a prefix length."""
    return bits // 8, (0xFF << (8 - bits % 8)) & 0xFF if bits % 8 else 0


_V4_MAPPED = bytes(10) + b"\xff\xff"


class RRL:
    """The accounts of one process (shared by its UDP listeners), and what was limited.

    `check` is O(1): one dict lookup, one move to the LRU's end, a little arithmetic.
    `clock` is injectable for tests; `dropped`/`slipped` count per listener slot.
    """

    def __init__(
        self,
        responses_per_second: float,
        window: float = 15.0,
        slip: int = 2,
        ipv4_prefix_length: int = 24,
        ipv6_prefix_length: int = 56,
        max_table_size: int = 100000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if responses_per_second <= 0:
            raise ValueError("RRL needs responses_per_second > 0 (0 means off: no limiter)")
        self.options: dict[str, Any] = {
            "responses_per_second": responses_per_second,
            "window": window,
            "slip": slip,
            "ipv4_prefix_length": ipv4_prefix_length,
            "ipv6_prefix_length": ipv6_prefix_length,
            "max_table_size": max_table_size,
        }
        self.clock = clock
        self.cost = 1.0 / responses_per_second
        self.floor = -float(window)
        self.slip = slip
        self.max_size = max_table_size
        self.table: OrderedDict[bytes, list[float]] = OrderedDict()  # prefix -> [balance, last, limited]
        self.dropped: dict[int, int] = {}
        self.slipped: dict[int, int] = {}
        self._v4 = _prefix_cut(ipv4_prefix_length)
        self._v6 = _prefix_cut(ipv6_prefix_length)

    # -- client prefixes ---------------------------------------------------------------

    def _cut(self, tag: bytes, packed: bytes, cut: tuple[int, int]) -> bytes:
        whole, mask = cut
        key = tag + packed[:whole]
        return key + bytes((packed[whole] & mask,)) if mask else key

    def prefix(self, source: bytes | tuple) -> bytes:
        """The account key of a client: a kernel sockaddr (`BatchIO.source`) or an address
        tuple (`PlainIO`). IPv4-mapped IPv6 sources count as IPv4 (a dual-stack socket)."""
        if type(source) is bytes:
            if source[0] == socket.AF_INET6 or source[1] == socket.AF_INET6:  # host-order family
                packed = source[8:24]
            else:
                return self._cut(b"4", source[4:8], self._v4)
        else:
            host = source[0].split("%")[0]  # type: ignore[union-attr]  # a tuple: `type() is` narrows one way only
            if ":" not in host:
                return self._cut(b"4", socket.inet_pton(socket.AF_INET, host), self._v4)
            packed = socket.inet_pton(socket.AF_INET6, host)
        if packed[:12] == _V4_MAPPED:
            return self._cut(b"4", packed[12:], self._v4)
        return self._cut(b"6", packed, self._v6)

    # -- the decision --------------------------------------------------------------------

    def check(self, key: bytes, now: float, slot: int = 0) -> int:
        """ANSWER, SLIP (send `truncated(answer)` instead) or DROP, for one more answer to `key`."""
        table = self.table
        acct = table.get(key)
        if acct is None:
            acct = table[key] = [1.0, now, 0]
            if len(table) > self.max_size:
                table.popitem(last=False)
        else:
            table.move_to_end(key)
        balance = acct[0] + (now - acct[1])
        if balance > 1.0:  # noqa: PLR1730 - a compare is cheaper than a call here
            balance = 1.0
        balance -= self.cost
        if balance < self.floor:  # noqa: PLR1730
            balance = self.floor
        acct[0], acct[1] = balance, now
        if balance >= 0:
            return ANSWER
        acct[2] += 1
        slip = self.slip
        if slip and acct[2] % slip == 0:
            self.slipped[slot] = self.slipped.get(slot, 0) + 1
            return SLIP
        self.dropped[slot] = self.dropped.get(slot, 0) + 1
        return DROP

    def allow(self, source: bytes | tuple, reply: bytes, slot: int = 0) -> bytes | None:
        """`reply`, its TC=1 slip, or None (dropped): for answers sent one at a time."""
        verdict = self.check(self.prefix(source), self.clock(), slot)
        if verdict == ANSWER:
            return reply
        return truncated(reply) if verdict == SLIP else None


def limiter(opts: dict[str, Any] | None, previous: RRL | None = None) -> RRL | None:
    """A limiter for `opts` (the config's `rrl` section as keywords; None or rate 0: off).
    An unchanged `previous` is kept (its table too); a new one takes over its counts, so
    the metrics stay monotonic across a reload."""
    if not opts or not opts.get("responses_per_second"):
        return None
    if previous is not None and previous.options == {**DEFAULTS, **opts}:
        return previous
    out = RRL(**opts)
    if previous is not None:
        out.dropped, out.slipped = previous.dropped, previous.slipped
    return out


def truncated(reply: bytes) -> bytes:
    """`reply` cut to its header and question, TC set: the slip answer ("ask me over TCP")."""
    end = _question_end(reply)
    if end is None:  # no single plain question to echo: the header alone
        return reply[:2] + bytes((reply[2] | 0x02, reply[3])) + bytes(8)
    return reply[:2] + bytes((reply[2] | 0x02, reply[3])) + b"\x00\x01" + bytes(6) + reply[12:end]


def _question_end(msg: bytes) -> int | None:
    """Where the one question of `msg` ends; None if it has not exactly one, uncompressed."""
    if len(msg) < 12 or msg[4:6] != b"\x00\x01":
        return None
    i, size = 12, len(msg)
    while i < size:
        n = msg[i]
        if n == 0:
            return i + 5 if i + 5 <= size else None
        if n & 0xC0:
            return None
        i += n + 1
    return None
