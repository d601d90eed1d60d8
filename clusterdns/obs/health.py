"""/health (liveness) and /ready (readiness) over HTTP, with CoreDNS's semantics.

- `/health` (default :8080): 200 "OK" while the process runs, also during the lame-duck
  period after SIGTERM, so the kubelet does not kill a pod that is draining.
- `/ready` (default :8181): 200 "OK" once every watched resource has synced, else 503
  with the names still missing. Once ready it stays ready through API outages
  (CoreDNS `monitor until-ready`, PR #3590: going unready on an API hiccup would take
  every DNS pod out at once). `draining` (set on SIGTERM) makes it 503 so the Service
  stops sending queries before the listeners close.

Served by `clusterdns.obs.http`, not aiohttp: node-cache's memory budget (see there).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from clusterdns.net.addr import host_port
from clusterdns.obs.http import HttpResponder, Reply, Request

log = logging.getLogger("clusterdns")

#: what is not ready yet; empty when ready (e.g. KubeSource.missing)
ReadyCheck = Callable[[], list[str]]

_TEXT = "text/plain; charset=utf-8"  # what aiohttp's web.Response(text=...) sent


def parse_address(addr: str, default_port: int) -> tuple[str, int]:
    """'host:port', ':port', '[v6]:port' or 'host' -> (host, port); '' host = all (net/addr.py)."""
    return host_port(addr, default_port)


class HealthServer:
    """Serves /health and /ready; same address for both serves them from one listener."""

    def __init__(self, health: str = ":8080", ready: str = ":8181", check: ReadyCheck | None = None) -> None:
        self.health_addr = parse_address(health, 8080)
        self.ready_addr = parse_address(ready, 8181)
        self.check: ReadyCheck = check or list
        self.draining = False
        """Set on SIGTERM: /ready answers 503 while /health stays 200 (lame duck)."""
        self._was_ready = False
        self._servers: list[HttpResponder] = []
        self.health_port = 0
        self.ready_port = 0

    def ready(self) -> tuple[bool, list[str]]:
        """(ready, what is missing); latches once ready (until-ready)."""
        if self.draining:
            return False, ["draining"]
        if self._was_ready:
            return True, []
        missing = self.check()
        if not missing:
            self._was_ready = True
            log.info("ready")
        return not missing, missing

    def _health(self, request: Request) -> Reply:
        return Reply(200, _TEXT, b"OK")

    def _ready(self, request: Request) -> Reply:
        ok, missing = self.ready()
        if ok:
            return Reply(200, _TEXT, b"OK")
        return Reply(503, _TEXT, ("\n".join(missing) + "\n").encode())

    async def start(self) -> None:
        """Bind the listeners; ports 0 pick free ones (see health_port/ready_port)."""
        same = self.health_addr == self.ready_addr and self.health_addr[1] != 0
        sites = [(self.health_addr, {"/health": self._health, **({"/ready": self._ready} if same else {})})]
        if not same:
            sites.append((self.ready_addr, {"/ready": self._ready}))
        try:
            for (host, port), routes in sites:
                server = HttpResponder(routes)
                self._servers.append(server)
                bound = await server.start(host, port)
                if "/health" in routes:
                    self.health_port = bound
                if "/ready" in routes:
                    self.ready_port = bound
        except BaseException:
            await self.stop()
            raise
        log.info(
            "health on %s:%d/health, readiness on %s:%d/ready",
            self.health_addr[0] or "*",
            self.health_port,
            self.ready_addr[0] or "*",
            self.ready_port,
        )

    async def stop(self) -> None:
        servers, self._servers = self._servers, []
        for server in servers:
            await server.stop()
