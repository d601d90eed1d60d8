"""How much of a UDP answer is socket I/O: three loops answer the same dict lookups.

    .venv/bin/python bench/udp_io.py [--seconds 5] [--queries bench/gen/s42-n5000/mix.txt]

Each mode runs in its own process pinned to CPU 0 on 127.0.0.1 with dnsperf (-c 10,
self-paced) on CPU 1, and answers every query by flipping it into a REFUSED reply after
the hot path's key computation and dict lookup:

* `protocol`: uvloop's DatagramProtocol (datagram_received + transport.sendto);
* `recvfrom`: a reader callback draining a non-blocking socket with recvfrom/sendto;
* `mmsg`: the server's own `batchio.BatchIO` (recvmmsg/sendmmsg, 64 per call).

Prints QPS, the server's CPU µs per query and dnsperf's average latency for each;
`--qps N` paces dnsperf (-Q N) to see the per-wake-up cost at a low rate. Run inside `unshare -n` with
`ip link set lo up` like everything else here; needs `dnsperf` and `taskset`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import resource
import signal
import socket
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODES = ("protocol", "recvfrom", "mmsg")


def serve(mode: str, port: int) -> None:
    import uvloop

    sys.path.insert(0, ROOT)
    from clusterdns.net import batchio

    table: dict[bytes, bytes] = {}

    def answer(data: bytes) -> bytes:
        key = data[2:12] + data[12:].lower()
        hit = table.get(key)
        return hit if hit is not None else data[:2] + b"\x85\x05" + data[4:]

    class Proto(asyncio.DatagramProtocol):
        def connection_made(self, transport):
            self.t = transport

        def datagram_received(self, data, addr):
            self.t.sendto(answer(data), addr)

    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", port))
    sock.setblocking(False)
    if mode == "protocol":
        loop.run_until_complete(loop.create_datagram_endpoint(Proto, sock=sock))
    elif mode == "recvfrom":
        def drain() -> None:
            for _ in range(512):
                try:
                    data, addr = sock.recvfrom(4096)
                except BlockingIOError:
                    return
                sock.sendto(answer(data), addr)
        loop.add_reader(sock.fileno(), drain)
    else:
        io = batchio.BatchIO(sock)

        def batches() -> None:
            for _ in range(8):
                n = io.recv()
                for i in range(n):
                    off = i * batchio.RECV_SIZE
                    out = answer(bytes(io.rbuf[off:off + io.lens[io.LEN_AT[i]]]))
                    so = i * batchio.SEND_SIZE
                    io.sbuf[so:so + len(out)] = out
                    io.slens[2 * i + 1] = len(out)
                if n:
                    io.send(n)
                if n < batchio.BATCH:
                    return
        loop.add_reader(sock.fileno(), batches)
    loop.add_signal_handler(signal.SIGTERM, loop.stop)
    print("ready", flush=True)
    loop.run_forever()
    ru = resource.getrusage(resource.RUSAGE_SELF)
    print(f"cpu {ru.ru_utime + ru.ru_stime:.3f}", flush=True)


def measure(mode: str, seconds: float, queries: str, qps: int = 0) -> tuple[float, float, float]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = subprocess.Popen(["taskset", "-c", "0", sys.executable, __file__, "--serve", mode, str(port)],
                           stdout=subprocess.PIPE, text=True)
    try:
        assert srv.stdout is not None and srv.stdout.readline().strip() == "ready"
        out = subprocess.run(["taskset", "-c", "1", "dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", queries,
                              "-c", "10", "-l", str(seconds)] + (["-Q", str(qps)] if qps else []),
                             capture_output=True, text=True,
                             timeout=seconds + 30).stdout
    finally:
        srv.send_signal(signal.SIGTERM)
        rest, _ = srv.communicate(timeout=10)
    rate = float(re.search(r"Queries per second:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    done = int(re.search(r"Queries completed:\s+(\d+)", out).group(1))  # type: ignore[union-attr]
    cpu = float(re.search(r"cpu ([\d.]+)", rest).group(1))  # type: ignore[union-attr]
    lat = float(re.search(r"Average Latency \(s\):\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    return rate, cpu / done * 1e6, lat * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--queries", default=os.path.join(ROOT, "bench/gen/s42-n5000/mix.txt"))
    ap.add_argument("--qps", type=int, default=0, help="paced at this rate (dnsperf -Q); 0: self-paced")
    ap.add_argument("--serve", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.serve:
        serve(a.serve[0], int(a.serve[1]))
        return
    print("| mode | QPS | server CPU µs/query (incl. start-up) | avg latency ms |\n|---|---:|---:|---:|")
    for mode in MODES:
        qps, us, lat = measure(mode, a.seconds, a.queries, a.qps)
        print(f"| {mode} | {qps:,.0f} | {us:.2f} | {lat:.3f} |", flush=True)


if __name__ == "__main__":
    main()
