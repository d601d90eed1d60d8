"""Spoofing defences of the forwarder (RFC 5452) against a misbehaving real server."""

from __future__ import annotations

import pytest

from clusterdns.forward.upstream import UpstreamSpec
from components import make_forwarder
from fakedns import ATTACK_IP, addresses, decode, question

WWW = "www.example.test. 300 IN A 192.0.2.1"


@pytest.mark.parametrize("kind", ["id", "question", "port"])
async def test_spoofed_answer_is_ignored(fake, kind: str) -> None:
    """A forged reply (wrong ID, question case changed, or another source port) that
    arrives before the real one is dropped; the client gets the real answer."""
    up = await fake(WWW, spoof=(kind,))
    fwd = make_forwarder([UpstreamSpec("127.0.0.1", up.port)])
    try:
        answer = decode(await fwd.query(question("www.example.test")[0].name, 1))
        assert addresses(answer) == ["192.0.2.1"]
        assert ATTACK_IP not in addresses(answer)
        if kind != "port":  # other ports never reach us: the socket is connected
            assert fwd.stats.spoofed == 1
    finally:
        fwd.close()


async def test_all_spoofs_together_never_win(fake) -> None:
    """Three forgeries per query, twenty queries: every answer is the real one."""
    up = await fake(WWW, spoof=("id", "question", "port"))
    fwd = make_forwarder([UpstreamSpec("127.0.0.1", up.port)])
    try:
        for _ in range(20):
            answer = decode(await fwd.query(question("www.example.test")[0].name, 1))
            assert addresses(answer) == ["192.0.2.1"]
        assert fwd.stats.spoofed == 40  # wrong-ID and wrong-question ones, counted
    finally:
        fwd.close()


async def test_each_udp_query_has_a_random_id_and_the_source_port_rotates(fake) -> None:
    """ID and port randomisation with pooled sockets (udppool.py): 50 queries use (nearly)
    50 IDs; the source port changes every `udp_rotate_queries` queries."""
    seen: list[tuple[int, int]] = []
    up = await fake(WWW)
    original = up.udp_received

    def record(data: bytes, addr: tuple) -> None:
        seen.append((int.from_bytes(data[:2], "big"), addr[1]))
        original(data, addr)

    up.udp_received = record  # type: ignore[method-assign]
    fwd = make_forwarder([UpstreamSpec("127.0.0.1", up.port)])
    fwd.upstreams[0].pool.rotate_queries = 10
    try:
        for _ in range(50):
            await fwd.query(question("www.example.test")[0].name, 1)
    finally:
        fwd.close()
    ids = {i for i, _ in seen}
    ports = [p for _, p in seen]
    assert len(seen) == 50
    assert len(ids) >= 45  # 16-bit random: a few birthday collisions are fine
    runs = [ports[i:i + 10] for i in range(0, 50, 10)]
    assert all(len(set(run)) == 1 for run in runs)  # ten queries per socket...
    assert len({run[0] for run in runs}) >= 4  # ...then a new random port (a closed one may recur)
