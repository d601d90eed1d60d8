"""Answers cut to what the transport carries: UDP to the client's size, TCP to 65,535 bytes.

In-process: a store fed directly, the handler's two paths (the plain-query fast path and the
general one) and the TCP protocol with a recording transport.
"""

from __future__ import annotations

import dns.flags
import dns.message
import pytest

from clusterdns.app.cluster import build_cluster
from clusterdns.kube.objects import parse_object
from clusterdns.server.tcp import TCPLimits, TCPProtocol
from clusterdns.settings.schema import ServeConfig

HUGE = "huge.team.svc.cluster.local."
ENDPOINTS = 4200  # 4,200 A records of 16 bytes: more than a TCP message can carry


def _cluster():
    store, handler = build_cluster(ServeConfig(listen=["127.0.0.1:0"]))
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "huge", "namespace": "team"},
           "spec": {"clusterIP": "None", "ports": [{"name": "http", "port": 80}]}}
    eps = [{"addresses": [f"10.{200 + i // 65536}.{(i // 256) % 256}.{i % 256}"], "conditions": {"ready": True}}
           for i in range(ENDPOINTS)]
    sl = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4", "endpoints": eps,
          "metadata": {"name": "huge-1", "namespace": "team", "labels": {"kubernetes.io/service-name": "huge"}},
          "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}
    store.load([parse_object(svc), parse_object(sl)])
    return handler


class RecordingTransport:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.sent.append(data)

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass


@pytest.mark.parametrize("edns", [-1, 0])
def test_tcp_answer_over_65535_bytes_is_cut_to_whole_records_with_tc(edns: int) -> None:
    handler = _cluster()
    q = dns.message.make_query(HUGE, "A", use_edns=edns)
    for reply in (handler.fast(q.to_wire(), 1, 0), handler.handle(q.to_wire(), True)):
        assert isinstance(reply, bytes) and len(reply) <= 65535
        r = dns.message.from_wire(reply)
        assert r.flags & dns.flags.TC and r.id == q.id
        kept = len(r.answer[0])
        assert 4000 < kept < ENDPOINTS and len(reply) + 16 > 65535, kept


async def test_tcp_protocol_sends_the_cut_answer_with_a_valid_length_prefix() -> None:
    handler = _cluster()
    proto = TCPProtocol(handler, TCPLimits())
    t = RecordingTransport()
    proto.transport = t  # type: ignore[assignment]
    q = dns.message.make_query(HUGE, "A").to_wire()
    proto.data_received(len(q).to_bytes(2, "big") + q)
    (framed,) = t.sent
    assert int.from_bytes(framed[:2], "big") == len(framed) - 2 <= 65535
    assert dns.message.from_wire(framed[2:]).flags & dns.flags.TC


@pytest.mark.parametrize("payload", [512, 1232, 4096])
def test_udp_answer_keeps_as_many_records_as_the_client_takes(payload: int) -> None:
    handler = _cluster()
    q = dns.message.make_query(HUGE, "A", use_edns=0, payload=payload)
    reply = handler.fast(q.to_wire(), 0, 0)
    assert reply is not None
    limit = min(payload, 1232)
    assert limit - 16 < len(reply) <= limit, "one more record would not fit"
    r = dns.message.from_wire(reply)
    assert r.flags & dns.flags.TC and r.edns == 0
