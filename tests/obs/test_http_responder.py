"""The probe/scrape HTTP responder (clusterdns.obs.http) over real loopback sockets, on
both the stdlib loop and uvloop (production): status codes, Content-Length, the bounds
that keep a slow or hostile client from holding memory or sockets, binds; then /metrics
content negotiation through it, and that node-cache runs without importing aiohttp."""

from __future__ import annotations

import asyncio
import gzip
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
import uvloop

from clusterdns.obs.http import HttpResponder, Reply, Request
from clusterdns.obs.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
BOUND = 5.0  # generous: "closed eventually", never a latency claim

Run = Callable[[Coroutine[Any, Any, Any]], Any]


@pytest.fixture(params=sorted(LOOPS))
def run(request: pytest.FixtureRequest) -> Run:
    def _run(coro: Coroutine[Any, Any, Any]) -> Any:
        with asyncio.Runner(loop_factory=LOOPS[request.param]) as runner:
            return runner.run(asyncio.wait_for(coro, 30))
    return _run


def echo(request: Request) -> Reply:
    body = f"{request.method} {request.path} {sorted(request.query.items())} {request.headers.get('x-a')}"
    return Reply(200, "text/plain; charset=utf-8", body.encode(), (("X-Seen", "yes"),))


def broken(request: Request) -> Reply:
    raise RuntimeError("handler bug")


ROUTES = {"/ok": lambda r: (200, "text/plain", b"OK"), "/echo": echo, "/broken": broken}


async def exchange(port: int, raw: bytes, host: str = "127.0.0.1") -> bytes:
    """Send `raw`, read until the server closes."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(raw)
        return await asyncio.wait_for(reader.read(), BOUND)
    finally:
        writer.close()


def parse(response: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    line, *fields = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (f.partition(":") for f in fields)}
    return int(line.split()[1]), headers, body


async def closed_by_server(reader: asyncio.StreamReader) -> bytes:
    """What arrives before the server closes (EOF or reset); times out if it never does."""
    try:
        return await asyncio.wait_for(reader.read(), BOUND)
    except ConnectionResetError:
        return b""


async def serving(routes: dict = ROUTES, host: str = "127.0.0.1", **bounds: Any) -> HttpResponder:
    responder = HttpResponder(routes, **bounds)
    await responder.start(host, 0)
    return responder


async def eventually(check: Callable[[], bool], what: str) -> None:
    for _ in range(int(BOUND / 0.01)):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never: {what}")


def get(path: str, *headers: str) -> bytes:
    return ("\r\n".join([f"GET {path} HTTP/1.1", "Host: t", *headers]) + "\r\n\r\n").encode()


# ----------------------------------------------------------------------- status codes


def test_known_path_is_200_with_content_length_and_connection_close(run: Run) -> None:
    async def main() -> None:
        r = await serving()
        try:
            status, headers, body = parse(await exchange(r.port, get("/ok")))
            assert (status, body) == (200, b"OK")
            assert headers["content-length"] == "2" and headers["connection"] == "close"
            assert headers["content-type"] == "text/plain"
        finally:
            await r.stop()
    run(main())


def test_handler_sees_method_path_query_and_headers_and_sets_extra_headers(run: Run) -> None:
    async def main() -> None:
        r = await serving()
        try:
            status, headers, body = parse(await exchange(r.port, get("/echo?n=1&n=2", "X-A: one", "x-a: two")))
            assert status == 200 and headers["x-seen"] == "yes"
            assert body == b"GET /echo [('n', ['1', '2'])] one,two"
            assert headers["content-length"] == str(len(body))
        finally:
            await r.stop()
    run(main())


def test_unknown_path_is_404(run: Run) -> None:
    async def main() -> None:
        r = await serving()
        try:
            status, headers, body = parse(await exchange(r.port, get("/nope")))
            assert status == 404 and headers["content-length"] == str(len(body))
        finally:
            await r.stop()
    run(main())


def test_other_methods_on_a_known_path_are_405_with_allow(run: Run) -> None:
    async def main() -> None:
        r = await serving()
        try:
            for method in ("POST", "DELETE", "PUT"):
                raw = f"{method} /ok HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n".encode()
                status, headers, _ = parse(await exchange(r.port, raw))
                assert status == 405 and headers["allow"] == "GET, HEAD", method
        finally:
            await r.stop()
    run(main())


def test_head_has_get_headers_without_a_body(run: Run) -> None:
    async def main() -> None:
        r = await serving()
        try:
            status, headers, body = parse(await exchange(r.port, b"HEAD /ok HTTP/1.1\r\nHost: t\r\n\r\n"))
            assert (status, headers["content-length"], body) == (200, "2", b"")
        finally:
            await r.stop()
    run(main())


def test_malformed_request_line_is_400(run: Run) -> None:
    async def main() -> None:
        r = await serving()
        try:
            for raw in (b"GET /ok\r\n\r\n", b"GET /ok SPDY/3\r\n\r\n", b"GET /ok HTTP/1.1\r\nno colon\r\n\r\n"):
                assert parse(await exchange(r.port, raw))[0] == 400, raw
        finally:
            await r.stop()
    run(main())


def test_failing_handler_is_500_and_the_server_keeps_serving(run: Run) -> None:
    async def main() -> None:
        r = await serving()
        try:
            assert parse(await exchange(r.port, get("/broken")))[0] == 500
            assert parse(await exchange(r.port, get("/ok")))[0] == 200
        finally:
            await r.stop()
    run(main())


def test_request_split_across_many_writes_is_answered(run: Run) -> None:
    async def main() -> None:
        r = await serving()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", r.port)
            for i in range(0, len(raw := get("/ok")), 3):
                writer.write(raw[i:i + 3])
                await writer.drain()
                await asyncio.sleep(0.001)
            assert parse(await closed_by_server(reader))[0] == 200
            writer.close()
        finally:
            await r.stop()
    run(main())


# ----------------------------------------------------------------------- bounds


def test_stalled_half_request_line_is_closed_after_the_deadline(run: Run) -> None:
    """Slowloris: half a request line, then nothing; the server closes and forgets it."""
    async def main() -> None:
        r = await serving(deadline=0.3)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", r.port)
            writer.write(b"GET /ok HT")
            await eventually(lambda: len(r.connections) == 1, "connection counted")
            assert await closed_by_server(reader) == b""
            await eventually(lambda: not r.connections, "connection forgotten")
            writer.close()
        finally:
            await r.stop()
    run(main())


def test_oversized_header_is_431_and_closed(run: Run) -> None:
    async def main() -> None:
        r = await serving(max_head=8192)
        try:
            never_ending = b"GET /ok HTTP/1.1\r\nX-Big: " + b"a" * 9000  # no end of head in sight
            assert parse(await exchange(r.port, never_ending))[0] == 431
            complete = get("/ok", "X-Big: " + "a" * 8200)  # whole head in one go, just too big
            assert parse(await exchange(r.port, complete))[0] == 431
            assert parse(await exchange(r.port, get("/ok", "X-Fits: " + "a" * 8000)))[0] == 200
        finally:
            await r.stop()
    run(main())


def test_connections_beyond_the_cap_are_closed_at_once(run: Run) -> None:
    async def main() -> None:
        r = await serving(max_connections=2, deadline=60)  # the deadline is not what closes it
        held = []
        try:
            for _ in range(2):
                reader, writer = await asyncio.open_connection("127.0.0.1", r.port)
                writer.write(b"GET /ok HTTP/1.1\r\n")
                held.append((reader, writer))
            await eventually(lambda: len(r.connections) == 2, "two connections held")
            reader, writer = await asyncio.open_connection("127.0.0.1", r.port)
            assert await closed_by_server(reader) == b""
            writer.close()
            first_reader, first_writer = held[0]
            first_writer.write(b"Host: t\r\n\r\n")  # the ones under the cap are still served
            assert parse(await closed_by_server(first_reader))[0] == 200
            await eventually(lambda: len(r.connections) == 1, "slot freed")
            assert parse(await exchange(r.port, get("/ok")))[0] == 200
        finally:
            for _, w in held:
                w.close()
            await r.stop()
    run(main())


def test_stop_closes_open_connections(run: Run) -> None:
    async def main() -> None:
        r = await serving(deadline=60)
        reader, writer = await asyncio.open_connection("127.0.0.1", r.port)
        writer.write(b"GET /ok")
        await eventually(lambda: len(r.connections) == 1, "connection counted")
        await r.stop()
        assert await closed_by_server(reader) == b""
        writer.close()
    run(main())


# ----------------------------------------------------------------------- binds


def test_binds_ipv6_loopback(run: Run) -> None:
    async def main() -> None:
        r = await serving(host="::1")
        try:
            assert parse(await exchange(r.port, get("/ok"), host="::1"))[0] == 200
            with socket.socket() as s:
                assert s.connect_ex(("127.0.0.1", r.port)) != 0  # ::1 only
        finally:
            await r.stop()
    run(main())


def test_every_address_with_port_zero_is_one_port_on_v4_and_v6(run: Run) -> None:
    async def main() -> None:
        r = await serving(host="")
        try:
            for host in ("127.0.0.1", "127.0.0.2", "::1"):
                assert parse(await exchange(r.port, get("/ok"), host=host))[0] == 200, host
        finally:
            await r.stop()
    run(main())


def test_port_in_use_raises_oserror(run: Run) -> None:
    async def main() -> None:
        r = await serving()
        try:
            with pytest.raises(OSError):
                await HttpResponder(ROUTES).start("127.0.0.1", r.port)
        finally:
            await r.stop()
    run(main())


# ----------------------------------------------------------------------- /metrics through it


def test_metrics_content_type_openmetrics_negotiation_and_gzip(run: Run) -> None:
    """What prometheus_client's aiohttp handler did: text 0.0.4 by default, OpenMetrics
    when asked, gzip when accepted."""
    async def main() -> None:
        m = Metrics(process=False)
        await m.start("127.0.0.1:0")
        try:
            status, headers, body = parse(await exchange(m.port, get("/metrics")))
            assert status == 200 and headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
            assert b"coredns_build_info" in body and headers["content-length"] == str(len(body))

            om = "Accept: application/openmetrics-text; version=1.0.0,text/plain;version=0.0.4;q=0.5"
            status, headers, body = parse(await exchange(m.port, get("/metrics", om)))
            assert headers["content-type"].startswith("application/openmetrics-text; version=1.0.0")
            assert body.endswith(b"# EOF\n")

            _, headers, packed = parse(await exchange(m.port, get("/metrics", "Accept-Encoding: gzip")))
            assert headers["content-encoding"] == "gzip" and b"coredns_build_info" in gzip.decompress(packed)

            assert parse(await exchange(m.port, get("/other")))[0] == 404
        finally:
            await m.stop()
    run(main())


# ----------------------------------------------------------------------- no aiohttp in node-cache

PROBE = """
import atexit, runpy, sys
atexit.register(lambda: print("AIOHTTP-MODULES", sorted(m for m in sys.modules if m.split(".")[0] == "aiohttp"),
                              file=sys.stderr, flush=True))
sys.argv = ["clusterdns", *sys.argv[1:]]
runpy.run_module("clusterdns", run_name="__main__")
"""


def test_imports_alone_do_not_load_aiohttp() -> None:
    code = ("import sys, clusterdns.app.nodecache, clusterdns.obs.health, clusterdns.obs.metrics, clusterdns.obs.http; "
            "assert not [m for m in sys.modules if m.split('.')[0] == 'aiohttp'], 'aiohttp imported'")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=30, check=False)
    assert r.returncode == 0, r.stderr


def test_running_node_cache_with_health_and_metrics_never_imports_aiohttp() -> None:
    """Started, probed, scraped and stopped: aiohttp never entered sys.modules."""
    args = ["node-cache", "--listen", "127.0.0.1:0", "--health", "127.0.0.1:0", "--metrics", "127.0.0.1:0",
            "--cluster-dns", "127.0.0.1:9", "--upstream", "127.0.0.1:9", "--no-loop-detect"]
    proc = subprocess.Popen([sys.executable, "-c", PROBE, *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines: list[str] = []
    serving_seen = threading.Event()

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if "serving node-cache" in line:
                serving_seen.set()
        serving_seen.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert serving_seen.wait(20) and proc.poll() is None, "".join(lines)
        out = "".join(lines)
        health = int(out.split("health on 127.0.0.1:")[1].split("/")[0])
        metrics = int(out.split("metrics on 127.0.0.1:")[1].split("/")[0])

        async def probe() -> None:
            assert parse(await exchange(health, get("/health")))[2] == b"OK"
            assert b"coredns_dns_requests_total" in parse(await exchange(metrics, get("/metrics")))[2]
        asyncio.run(probe())
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0, "".join(lines)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(5)
    report = [x for x in lines if x.startswith("AIOHTTP-MODULES")]
    assert report == ["AIOHTTP-MODULES []\n"], "".join(lines)

