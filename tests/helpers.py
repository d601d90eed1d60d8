"""Start a real `clusterdns` process on ephemeral loopback ports and talk to it; or a
single UDP listener in the test's own event loop (`udp_listener`, `UDPClient`)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import dns.message
import dns.query
import dns.rdatatype

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "config" / "demo-cluster.yaml"
TEST_CLUSTER = ROOT / "tests" / "data" / "cluster.yaml"
SERVING = re.compile(r"serving \S+ on (.+?) \(udp\+tcp\)")


class ServerProcess:
    """`clusterdns ARGS` as a child process; knows the ports it bound (--listen ...:0)."""

    def __init__(self, *args: str, ready_timeout: float = 20.0) -> None:
        self.args = [sys.executable, "-m", "clusterdns", *args]
        self.ready_timeout = ready_timeout
        self.addresses: list[tuple[str, int]] = []
        self.lines: list[str] = []
        self.proc: subprocess.Popen[str] | None = None
        self._ready = threading.Event()

    def start(self) -> ServerProcess:
        self.proc = subprocess.Popen(self.args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        threading.Thread(target=self._read, daemon=True).start()
        if not self._ready.wait(self.ready_timeout):
            self.stop()
            raise RuntimeError("clusterdns did not start:\n" + "".join(self.lines[-20:]))
        if not self.addresses:
            raise RuntimeError("clusterdns exited:\n" + "".join(self.lines[-20:]))
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            m = SERVING.search(line)
            if m and not self._ready.is_set():
                for spec in m.group(1).split(", "):
                    host, port = spec.rsplit(":", 1)
                    self.addresses.append((host, int(port)))
                self._ready.set()
        self._ready.set()  # exited before serving

    @property
    def port(self) -> int:
        return self.addresses[0][1]

    def output(self) -> str:
        return "".join(self.lines)

    def wait_exit(self, timeout: float = 10.0) -> int:
        assert self.proc is not None
        rc = self.proc.wait(timeout)
        time.sleep(0.05)  # let the reader thread drain stderr
        return rc

    def stop(self) -> int | None:
        """SIGTERM our own child by PID; SIGKILL if it does not go."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(5)

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def port_53_free() -> None:
    """Fail plainly when 127.0.0.1:53 is taken: the pod-view tests need it (glibc and musl
    only talk to port 53), which the suite's private network namespace provides."""
    import pytest

    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind(("127.0.0.1", 53))
            except OSError as exc:
                pytest.fail(f"127.0.0.1:53 is not free ({exc}); run the suite in its own network "
                            "namespace: unshare -n sh -c 'ip link set lo up && .venv/bin/pytest ...'")


def query(server: ServerProcess, name: str, rdtype: str = "A", tcp: bool = False,
          host: str = "127.0.0.1", **make: object) -> dns.message.Message:
    """One query with dnspython, the independent client."""
    port = next(p for h, p in server.addresses if h == host)
    q = dns.message.make_query(name, dns.rdatatype.from_text(rdtype), **make)  # type: ignore[arg-type]
    if tcp:
        return dns.query.tcp(q, host, port=port, timeout=3)
    return dns.query.udp(q, host, port=port, timeout=3, ignore_trailing=False)


class UDPClient:
    """A client socket for a UDP listener running in the test's own event loop: it must
    not block the loop, so it waits with `loop.sock_recv`."""

    def __init__(self, addr: tuple) -> None:
        self.sock = socket.socket(socket.AF_INET6 if ":" in addr[0] else socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.sock.connect(addr)

    def send(self, wire: bytes) -> None:
        self.sock.send(wire)

    async def recv(self, timeout: float = 2.0) -> bytes | None:
        """The next datagram, or None when nothing came within `timeout`."""
        loop = asyncio.get_running_loop()
        try:
            return await asyncio.wait_for(loop.sock_recv(self.sock, 65535), timeout)
        except TimeoutError:
            return None

    async def ask(self, wire: bytes, timeout: float = 2.0) -> bytes | None:
        self.send(wire)
        return await self.recv(timeout)

    def close(self) -> None:
        self.sock.close()


def udp_listener(handler, slot: int = 0, io: str = "mmsg", host: str = "127.0.0.1"):
    """A `UDPListener` on `host`, port 0, with batched (`mmsg`) or one-by-one (`plain`) I/O.
    Call inside a running event loop."""
    from clusterdns.net import batchio
    from clusterdns.server import udp

    listener = udp.UDPListener(handler, udp.bind(host, 0), slot)
    if io == "plain":
        listener.io = batchio.PlainIO(listener.sock)
    else:
        assert isinstance(listener.io, batchio.BatchIO), "recvmmsg is available on Linux"
    return listener
