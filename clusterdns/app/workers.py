"""`--workers N`: N processes answer on the same port, one of them owns the source.

The first process (the leader) reads the manifests or watches the API, exactly as with
one process. Its store journals every mutation (`ClusterStore.follow`), and the journal
goes down a pipe to each worker, which replays it on its own store (`apply_journal`):
one watch per pod for the API server, one view of the cluster for every process.
The kernel spreads queries over the processes by 4-tuple (SO_REUSEPORT).

Workers are forked before any event loop or thread exists, so nothing is inherited
half-way; each runs its own uvloop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("clusterdns")
_LEN = struct.Struct("!I")


def resolve_ports(listen: list[str], parse: Callable[[str], tuple[str, int]]) -> list[str]:
    """Turn port 0 into a concrete port free for both UDP and TCP, so every process binds it."""
    out = []
    for spec in listen:
        host, port = parse(spec)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        for _ in range(20 if port == 0 else 0):
            with socket.socket(family, socket.SOCK_DGRAM) as u, socket.socket(family, socket.SOCK_STREAM) as t:
                u.bind((host, 0))
                try:
                    t.bind((host, u.getsockname()[1]))
                except OSError:
                    continue  # a TCP socket holds that port: pick again
                port = u.getsockname()[1]
                break
        out.append(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    return out


class Journal:
    """Leader side: length-prefixed pickles of store journals, one pipe per worker."""

    def __init__(self, fds: list[int]) -> None:
        self.files = [os.fdopen(fd, "wb", buffering=0) for fd in fds]
        self.transports: list[asyncio.WriteTransport] = []

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        for f in self.files:
            transport, _ = await loop.connect_write_pipe(asyncio.Protocol, f)
            self.transports.append(transport)

    def send(self, ops: list) -> None:
        """Store feed: never blocks the loop (the transport buffers)."""
        data = pickle.dumps(ops, protocol=pickle.HIGHEST_PROTOCOL)
        frame = _LEN.pack(len(data)) + data
        for t in self.transports:
            if not t.is_closing():
                t.write(frame)

    def close(self) -> None:
        """Close the pipes: workers see end-of-file and stop."""
        for f in self.files:
            try:
                f.close()
            except OSError:
                pass


class JournalReader(asyncio.Protocol):
    """Worker side: replays the leader's journal; the pipe closing means the leader is gone."""

    def __init__(self, apply: Callable[[list], None], ended: Callable[[], None]) -> None:
        self.apply = apply
        self.ended = ended  # the worker's stop: it drains and exits
        self.buf = bytearray()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while len(self.buf) >= 4:
            size = _LEN.unpack_from(self.buf)[0]
            if len(self.buf) < 4 + size:
                return
            ops = pickle.loads(self.buf[4 : 4 + size])  # our own leader's bytes, over a private pipe
            del self.buf[: 4 + size]
            self.apply(ops)

    def connection_lost(self, exc: Exception | None) -> None:
        self.ended()


@dataclass(frozen=True)
class Worker:
    """The leader's handle on a forked worker."""

    index: int
    pid: int
    journal: int  # write end: the store journal goes down it
    metrics: int  # read end: the worker's metric families come up it (obs.metrics.FamilyFeed)


def fork_workers(count: int, run_worker: Callable[[int, int, int], int]) -> list[Worker]:
    """Fork `count` workers; each runs `run_worker(index, journal_read_fd, metrics_write_fd)`
    and exits."""
    workers: list[Worker] = []
    for index in range(1, count + 1):
        r, w = os.pipe()
        mr, mw = os.pipe()
        pid = os.fork()
        if pid == 0:  # child
            os.close(w)
            os.close(mr)
            for other in workers:
                os.close(other.journal)
                os.close(other.metrics)
            code = 1
            try:
                code = run_worker(index, r, mw)
            finally:
                logging.shutdown()
                os._exit(code)
        os.close(r)
        os.close(mw)
        workers.append(Worker(index, pid, w, mr))
    return workers
