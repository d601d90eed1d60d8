"""The `rrl` section of the settings: response-rate limiting of UDP answers (server/rrl.py,
CoreDNS's rrl plugin), declared beside the limiter it tunes; off by default."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from clusterdns.options import checks as c
from clusterdns.options.declare import option

_SECONDS = " seconds"


@dataclass
class RRLSettings:
    """Response-rate limiting of UDP answers per client prefix (server/rrl.py); off by default."""

    responses_per_second: float = option(
        0.0,
        "UDP answers per second to one client prefix before RRL drops or "
        "slips them (CoreDNS rrl `responses-per-second`); 0 = off. TCP is never "
        "limited.",
        check=c.between(0, None, " per second (0 = off)"),
        metavar="N",
    )
    window: float = option(
        15.0,
        "Seconds of debt a limited prefix can build (CoreDNS rrl `window`): a flood that "
        "stops is answered again within this long.",
        check=c.between(1, 3600, _SECONDS),
    )
    slip: int = option(
        2,
        "Every Nth limited answer goes out empty with TC=1 so real clients retry over TCP; 0 "
        "drops all, 1 truncates all (CoreDNS rrl `slip-ratio`).",
        check=c.between(0, 10, " (0 = drop all, 1 = truncate all)"),
        metavar="N",
    )
    ipv4_prefix_length: int = option(
        24,
        "IPv4 clients in one /N share a budget (CoreDNS rrl `ipv4-prefix-length`).",
        check=c.between(0, 32, " bits"),
        metavar="BITS",
    )
    ipv6_prefix_length: int = option(
        56,
        "IPv6 clients in one /N share a budget (CoreDNS rrl `ipv6-prefix-length`).",
        check=c.between(0, 128, " bits"),
        metavar="BITS",
    )
    max_table_size: int = option(
        100000,
        "Prefixes tracked at most, least recently seen evicted (CoreDNS rrl "
        "`max-table-size`), so spoofed sources cannot grow memory.",
        check=c.between(1),
        metavar="N",
    )


def rrl_kwargs(rrl: RRLSettings) -> dict[str, Any] | None:
    """`server.rrl.RRL` keyword arguments; None when response-rate limiting is off."""
    if not rrl.responses_per_second:
        return None
    return {f.name: getattr(rrl, f.name) for f in fields(rrl)}
