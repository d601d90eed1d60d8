"""Forwarding-loop detection (CoreDNS's loop plugin): an upstream that sends our
questions back to us would bounce every name outside the cluster until it times out.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import secrets
from collections.abc import Iterable
from typing import TYPE_CHECKING

from clusterdns.forward.forwarder import ForwardError
from clusterdns.wire.constants import RRClass, RRType
from clusterdns.wire.names import to_text, to_wire

if TYPE_CHECKING:
    from clusterdns.forward.forwarder import Forwarder
    from clusterdns.forward.upstream import UpstreamSpec

log = logging.getLogger("clusterdns.forward")


LOOP_ZONE = "clusterdns-loop."

LOOP_HELP = (
    "forwarding loop detected: our own probe query {probe} HINFO came back to this server "
    "through the upstream(s) {upstreams}. The upstream forwards to us, so every name outside "
    "the cluster would bounce until it times out. Most common cause: the node's "
    "/etc/resolv.conf (read by a pod with dnsPolicy Default, or given with --resolv-conf) "
    "lists 127.0.0.53 (systemd-resolved's stub) or another local resolver that sends queries "
    "back to the cluster DNS. Fix: start kubelet with "
    "--resolv-conf=/run/systemd/resolve/resolv.conf (the real upstream servers), or pass "
    "--upstream with real upstream addresses. Exiting."
)


class LoopDetector:
    """Detect a forwarding loop the way CoreDNS's loop plugin does.

    A random name under `clusterdns-loop.` is sent through each forwarder once at start.
    Only we know the name, so if it ever arrives as an incoming query, an upstream sent it
    back to us: `seen()` returns True and `tripped` is set with a plain explanation.
    """

    def __init__(self) -> None:
        rand = secrets.token_hex(8)
        self.name = to_wire(f"{rand}.{secrets.token_hex(4)}.{LOOP_ZONE}")
        self.tripped: asyncio.Event = asyncio.Event()
        self.message = ""
        self._upstreams: list[str] = []

    def seen(self, name: bytes) -> bool:
        """Call on every incoming question that is about to be forwarded."""
        if name != self.name:
            return False
        if not self.tripped.is_set():
            self.message = LOOP_HELP.format(probe=to_text(self.name), upstreams=", ".join(self._upstreams) or "?")
            log.error(self.message)
            self.tripped.set()
        return True

    async def probe(self, forwarders: Iterable[Forwarder]) -> None:
        """Send the probe through every forwarder; the answer itself does not matter."""
        fwds = list(forwarders)
        self._upstreams = sorted({str(u.spec) for f in fwds for u in f.upstreams})
        for f in fwds:
            try:
                await f.query(self.name, RRType.HINFO, RRClass.IN)
            except ForwardError:
                pass  # upstream down or answered nothing useful: no loop seen through it


def check_self_forwarding(upstreams: Iterable[UpstreamSpec], listen: Iterable[tuple[str, int]]) -> str | None:
    """A plain message if an upstream is one of our own listen addresses (a sure loop)."""
    mine = set()
    for host, port in listen:
        try:
            mine.add((ipaddress.ip_address(host), port))
        except ValueError:
            continue
    for up in upstreams:
        addr = ipaddress.ip_address(up.host.split("%")[0])
        if (addr, up.port) in mine or (
            any(h.is_unspecified and h.version == addr.version and p == up.port for h, p in mine) and addr.is_loopback
        ):
            return (
                f"forwarding loop: upstream {up} is this server's own listen address. "
                "If it came from a resolv.conf, the node points at a local resolver "
                "(e.g. 127.0.0.53, systemd-resolved); start kubelet with "
                "--resolv-conf=/run/systemd/resolve/resolv.conf or pass --upstream."
            )
    return None
