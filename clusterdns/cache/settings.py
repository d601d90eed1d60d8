"""The `cache` section of the settings: what the response cache of forwarded names is told
(CoreDNS `cache`). Declared here, beside the cache it tunes; settings/schema.py puts it in
both modes, and ResponseCache takes these values and has no defaults of its own."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from clusterdns.options import checks as c
from clusterdns.options.declare import option

_SECONDS = " seconds"
_WEEK = 604800


@dataclass
class CacheSettings:
    """Cache of forwarded answers (CoreDNS `cache`); the parts both modes share."""

    max_entries: int = option(
        9984, "Entries per forward zone (CoreDNS's capacity); least recently used evicted beyond.", check=c.between(1)
    )
    max_denial_entries: int = option(
        9984,
        "NXDOMAIN/NODATA/SERVFAIL entries per forward zone, kept apart (CoreDNS "
        "`denial CAPACITY`): a flood of unknown names evicts denials only, never "
        "positive answers.",
        check=c.between(1),
        flag="--cache-denial-entries",
        metavar="N",
    )
    success_ttl: int = option(
        30,
        "Cap on positive TTLs (kubeadm's `cache 30`, node-local-dns's `cache 30`): upstream changes show within 30 s.",
        check=c.between(0, _WEEK, _SECONDS),
    )
    denial_ttl: int = option(
        30, "Cap on NXDOMAIN/NODATA TTLs (`cache 30` caps both).", check=c.between(0, _WEEK, _SECONDS)
    )
    min_ttl: int = option(
        5,
        "Floor on cached TTLs (CoreDNS MINTTL): a TTL-0 answer still spares the upstream.",
        check=c.between(0, _WEEK, _SECONDS),
    )
    servfail_ttl: int = option(
        5,
        "Upstream SERVFAIL kept this long (CoreDNS `servfail 5s`) so a broken zone is not hammered.",
        check=c.between(0, 300, " seconds (RFC 2308 7.1 caps it at 5 minutes)"),
    )
    serve_stale: float = option(
        3600.0,
        "Seconds past expiry an answer may still be served when upstreams fail "
        "(RFC 8767); 0 = off. node-local-dns has none: a short cluster DNS outage fails "
        "every pod's lookups (kubernetes#113080).",
        check=c.between(0, _WEEK, " seconds (RFC 8767 suggests at most 7 days)"),
        flag="--serve-stale",
        metavar="SECONDS",
    )
    stale_ttl: int = option(
        30, "TTL on stale answers (RFC 8767 section 4 recommends 30 s).", check=c.between(1, 86400, _SECONDS)
    )
    stale_answer_timeout: float = option(
        1.8,
        "Wait this long for a slow upstream before the stale answer goes out (RFC 8767 section 5).",
        check=c.between(0, 60, _SECONDS),
    )
    stale_recheck: float = option(
        5.0,
        "After a failed refresh, serve stale without asking upstream for this long.",
        check=c.between(0, 86400, _SECONDS),
    )
    prefetch: int = option(
        0,
        "Refresh an entry asked this many times before it expires; 0 = off (CoreDNS default).",
        check=c.between(0),
        flag="--prefetch",
        metavar="N",
    )
    prefetch_percentage: int = option(
        10,
        "Prefetch when less than this share of the TTL is left (CoreDNS default 10 percent).",
        check=c.between(0, 100, " percent"),
    )


def cache_kwargs(cache: CacheSettings, max_ttl: int, max_negative_ttl: int) -> dict[str, Any]:
    """ResponseCache keyword arguments from a cache section, with the zone's TTL caps."""
    return dict(
        max_entries=cache.max_entries,
        max_denial_entries=cache.max_denial_entries,
        max_ttl=max_ttl,
        min_ttl=cache.min_ttl,
        max_negative_ttl=max_negative_ttl,
        min_negative_ttl=cache.min_ttl,
        servfail_ttl=cache.servfail_ttl,
        prefetch=cache.prefetch,
        prefetch_percentage=cache.prefetch_percentage,
        serve_stale=cache.serve_stale,
        stale_ttl=cache.stale_ttl,
        stale_answer_timeout=cache.stale_answer_timeout,
        stale_recheck=cache.stale_recheck,
    )
