"""Render the common answers ahead of the first query.

The answer table fills on first use; rendering costs ~60-90 µs a question, so a cold
pass over a 5,000-service cluster runs at a slow-path pace. After start-up (and after a
re-list) we render, in the background and in small chunks so queries keep their turn,
what pods ask most: A and AAAA of every Service, SRV of its named ports, and A/AAAA of
headless endpoint names, as plain questions with RD set (glibc, musl, dnsperf).

At most `LIMIT` answers: enough for every Service of a 5,000-service cluster, and a
bounded amount of memory (~8 MB) on larger ones, whose other answers fill on first use
(CoreDNS's cache is 9,984 entries by default for the same reason).
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Iterator

from clusterdns.kube.store import ClusterStore
from clusterdns.server.handler import Handler
from clusterdns.wire import records as R

log = logging.getLogger("clusterdns")
CHUNK = 100  # questions rendered between two turns of the event loop
LIMIT = 20_000  # answers pre-rendered at most


def _query(name: str, qtype: int) -> bytes:
    wire = b"".join(bytes([len(label)]) + label.encode() for label in name.split(".")) + b"\x00"
    return struct.pack("!HHHHHH", 0, 0x0100, 1, 0, 0, 0) + wire + struct.pack("!HH", qtype, R.IN)


def questions(store: ClusterStore, zone: str) -> Iterator[bytes]:
    for (ns, name), view in list(store.views.items()):
        fqdn = f"{name}.{ns}.svc.{zone}"
        yield _query(fqdn, R.A)
        yield _query(fqdn, R.AAAA)
        svc = view.service
        for p in dict.fromkeys((p.name, p.protocol) for p in svc.ports if p.name):
            yield _query(f"_{p[0]}._{p[1]}.{fqdn}", R.SRV)
        if svc.headless:
            for host in dict.fromkeys(b.host for b in view.backends):
                yield _query(f"{host}.{fqdn}", R.A)


async def warm(handler: Handler, store: ClusterStore, zone: str) -> int:
    """Render the answers `questions` lists; returns how many were rendered."""
    done = 0
    for wire in questions(store, zone):
        if done >= LIMIT:
            break
        if handler.table.lookup(wire, False) is None:
            handler.handle(wire, False)
            done += 1
            if done % CHUNK == 0:
                await asyncio.sleep(0)
    log.debug("pre-rendered %d answers", done)
    return done
