"""The `forward` section of the settings: how the forwarder treats its upstreams (CoreDNS
`forward`). Declared here, beside the forwarder it tunes; the Forwarder takes these values
and has no defaults of its own."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from clusterdns.forward.forwarder import POLICIES
from clusterdns.options import checks as c
from clusterdns.options.declare import option

_SECONDS = " seconds"


@dataclass
class ForwardSettings:
    """Upstream handling (CoreDNS `forward`), the same in both modes."""

    policy: str = option(
        "random",
        "random, round_robin or sequential (CoreDNS forward `policy`).",
        check=c.one_of(*POLICIES),
        flag="--policy",
    )
    max_fails: int = option(
        2, "Consecutive failures before an upstream is marked down and health-probed.", check=c.between(0)
    )
    health_interval: float = option(
        0.5, "Seconds between `. IN NS` probes of a down upstream.", check=c.above(0, _SECONDS)
    )
    read_timeout: float = option(2.0, "Per-upstream wait before trying the next one.", check=c.above(0, _SECONDS))
    timeout: float = option(5.0, "Whole-question budget across upstreams.", check=c.above(0, _SECONDS))
    expire: float = option(
        10.0, "Pooled TCP connections idle longer than this are closed.", check=c.between(0, None, _SECONDS)
    )
    max_concurrent: int = option(
        1000,
        "Questions in flight per forwarder beyond which new ones get REFUSED (kubeadm's `max_concurrent 1000`).",
        check=c.between(1),
        flag="--max-concurrent",
        metavar="N",
    )


def forward_kwargs(forward: ForwardSettings) -> dict[str, Any]:
    """Forwarder keyword arguments."""
    return {f.name: getattr(forward, f.name) for f in fields(forward)}
