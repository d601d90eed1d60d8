"""The UDP listener's batches: many queries taken by one receive call still get their
own answer at their own address, hot, slow and dropped queries mixed in one batch, oversized
answers and queries handled one by one. Both I/O modes, real sockets on loopback."""

from __future__ import annotations

import asyncio

import dns.edns
import dns.message
import pytest

from clusterdns.app.cluster import build_cluster
from clusterdns.kube.objects import parse_object
from clusterdns.net.batchio import BATCH, RECV_SIZE, SEND_SIZE
from clusterdns.server.handler import Answer
from clusterdns.settings.schema import ServeConfig
from helpers import UDPClient, udp_listener

IO = pytest.mark.parametrize("io", ["mmsg", "plain"])


@pytest.fixture
def handler():
    store, handler = build_cluster(ServeConfig(manifests=[], max_udp=65535))
    for i in range(40):
        store.upsert(parse_object({"apiVersion": "v1", "kind": "Service",
                                   "metadata": {"name": f"svc-{i}", "namespace": "default"},
                                   "spec": {"clusterIP": f"10.0.0.{i + 1}"}}))
    store.upsert(parse_object({"apiVersion": "v1", "kind": "Service",
                               "metadata": {"name": "big", "namespace": "default"},
                               "spec": {"clusterIP": "None"}}))
    store.upsert(parse_object({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "big-1", "namespace": "default",
                     "labels": {"kubernetes.io/service-name": "big"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [f"10.1.{i // 250}.{i % 250 + 1}"], "conditions": {"ready": True}}
                      for i in range(400)]}))
    return handler


@IO
async def test_a_burst_larger_than_a_batch_gets_every_answer_at_its_own_address(handler, io: str) -> None:
    listener = udp_listener(handler, io=io)
    clients = [UDPClient(listener.sockname()) for _ in range(5)]
    asked: dict[int, dict[int, str]] = {k: {} for k in range(len(clients))}
    try:
        for svc in range(10):  # half the names answered once already: hot; the rest slow
            assert await clients[0].ask(dns.message.make_query(f"svc-{svc}.default.svc.cluster.local.", "A").to_wire())
        # queued without yielding to the loop, so the listener takes them in batches
        for n in range(3 * BATCH + 7):
            k, svc = n % len(clients), n % 20
            if n % 7 == 3:  # dropped (too short): later answers move to lower send slots
                clients[(k + 1) % len(clients)].send(b"\x00" * 5)
            q = dns.message.make_query(f"svc-{svc}.default.svc.cluster.local.", "A")
            q.id = n
            asked[k][n] = f"10.0.0.{svc + 1}"
            clients[k].send(q.to_wire())
        for k, c in enumerate(clients):
            got: dict[int, str] = {}
            while len(got) < len(asked[k]):
                reply = await c.recv()
                assert reply is not None, f"client {k} got {len(got)} of {len(asked[k])} answers"
                r = dns.message.from_wire(reply)
                got[r.id] = r.answer[0][0].address
            assert got == asked[k]
    finally:
        for x in (*clients, listener):
            x.close()


@IO
async def test_an_answer_longer_than_a_send_slot_goes_out_whole(handler, io: str) -> None:
    listener = udp_listener(handler, io=io)
    c = UDPClient(listener.sockname())
    try:
        q = dns.message.make_query("big.default.svc.cluster.local.", "A", use_edns=0, payload=65535)
        for _ in range(2):  # slow path, then the hot path
            reply = await c.ask(q.to_wire())
            assert reply is not None and len(reply) > SEND_SIZE
            r = dns.message.from_wire(reply)
            assert not r.flags & dns.flags.TC and len(r.answer[0]) == 400
    finally:
        c.close()
        listener.close()


@IO
async def test_a_query_longer_than_the_receive_slot_is_dropped_and_counted(handler, io: str) -> None:
    listener = udp_listener(handler, io=io)
    c = UDPClient(listener.sockname())
    try:
        q = dns.message.make_query("svc-1.default.svc.cluster.local.", "A", use_edns=0,
                                   options=[dns.edns.GenericOption(65001, b"x" * RECV_SIZE)])
        c.send(q.to_wire(max_size=65535))
        assert await c.recv(0.3) is None
        assert await c.ask(dns.message.make_query("svc-1.default.svc.cluster.local.", "A").to_wire())
    finally:
        c.close()
        listener.close()
    assert handler.stats.dropped == {(0, False, "too_long"): 1}


async def test_answers_to_a_gone_client_cost_only_their_own(handler) -> None:
    """A client that closed its socket (ICMP port unreachable) does not stop the batch."""
    listener = udp_listener(handler)
    gone, stays = UDPClient(listener.sockname()), UDPClient(listener.sockname())
    try:
        for i in range(20):
            gone.send(dns.message.make_query(f"svc-{i}.default.svc.cluster.local.", "A").to_wire())
        gone.close()
        await asyncio.sleep(0.05)
        assert await stays.ask(dns.message.make_query("svc-3.default.svc.cluster.local.", "A").to_wire())
    finally:
        stays.close()
        listener.close()


@IO
async def test_answers_ready_later_go_out_together_each_to_its_client(handler, io: str) -> None:
    """Forwarded answers resolved in one turn of the loop leave in one batch (send_each),
    each at the address its query came from; the listener closing sends what is queued."""
    listener = udp_listener(handler, io=io)
    clients = [UDPClient(listener.sockname()) for _ in range(3)]
    loop = asyncio.get_running_loop()
    futures: list[tuple[bytes, asyncio.Future]] = []

    def later(data: bytes, tcp: bool, notify: object = None) -> Answer:
        fut = loop.create_future()
        futures.append((data, fut))
        return Answer(fut, "forward")

    handler.answer = later  # every query is "forwarded"
    try:
        for n in range(2 * BATCH + 5):
            q = dns.message.make_query("x.example.", "A")
            q.id = n
            clients[n % 3].send(q.to_wire())
        for _ in range(200):
            await asyncio.sleep(0.01)
            if len(futures) == 2 * BATCH + 5:
                break
        assert listener.pending == len(futures) == 2 * BATCH + 5
        for data, fut in futures:
            fut.set_result(data[:2] + b"\x81\x80" + data[4:])  # the query turned into a reply
        for k, c in enumerate(clients):
            ids = set()
            for _ in range(len(range(k, 2 * BATCH + 5, 3))):
                reply = await c.recv()
                assert reply is not None and reply[2] & 0x80
                ids.add(int.from_bytes(reply[:2], "big"))
            assert ids == set(range(k, 2 * BATCH + 5, 3))
        assert listener.pending == 0
    finally:
        for x in (*clients, listener):
            x.close()


def test_listening_socket_has_room_for_a_burst() -> None:
    """The listener asks for a 1 MB receive buffer (the kernel reports twice what it
    grants, capped by net.core.rmem_max unless the process may force it): a burst of
    4 KB junk waits there instead of pushing real queries out."""
    import socket as _socket

    from clusterdns.server import udp as udp_mod

    with open("/proc/sys/net/core/rmem_max") as f:
        rmem_max = int(f.read())
    sock = udp_mod.bind("127.0.0.1", 0)
    try:
        got = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_RCVBUF)
    finally:
        sock.close()
    assert got >= 2 * min(udp_mod.LISTEN_RCVBUF, rmem_max)
    assert got > 2 * 212992 or rmem_max <= 212992  # more than the kernel's default when allowed
