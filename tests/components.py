"""Components built for tests from the settings' defaults: every tuning value of the response
cache and the forwarder lives once, in clusterdns/settings/schema.py; a test states only what
it changes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from clusterdns.cache.settings import CacheSettings, cache_kwargs
from clusterdns.forward.forwarder import Forwarder
from clusterdns.forward.settings import ForwardSettings, forward_kwargs
from clusterdns.forward.upstream import UpstreamSpec


def cache_options(**changes: Any) -> dict[str, Any]:
    """ResponseCache keyword arguments: the settings' defaults with CoreDNS `cache`'s own caps
    (3600 s positive, 1800 s negative) and serve-stale off, so a test sees upstream TTLs as sent
    and no stale answer unless it asks for one; `changes` override any of them."""
    base = cache_kwargs(CacheSettings(), max_ttl=3600, max_negative_ttl=1800)
    return {**base, "serve_stale": 0.0, **changes}


def forwarder_options(**changes: Any) -> dict[str, Any]:
    """Forwarder keyword arguments: the settings' defaults, `changes` over them."""
    return {**forward_kwargs(ForwardSettings()), **changes}


def make_forwarder(upstreams: Sequence[UpstreamSpec], **changes: Any) -> Forwarder:
    """A Forwarder with the settings' defaults except `changes` (name, except_zones, timeouts)."""
    return Forwarder(upstreams, **forwarder_options(**changes))
