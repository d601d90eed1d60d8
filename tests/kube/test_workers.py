"""`--workers`: every process answers on the shared port, one watch feeds them all."""

from __future__ import annotations

import asyncio
import socket
import time

import dns.message
import dns.query
import dns.rdataclass

from kubeapi import KubeAPIServer, namespace, service

NAME = "web.app.svc.cluster.local."


def probe(port: int) -> tuple[str, list[str]]:
    """From one fresh source port (so one worker, by the kernel's 4-tuple hash): who
    answers, and what it says for NAME."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        ident = dns.message.make_query("id.server.", "TXT", rdclass=dns.rdataclass.CH)
        who = dns.query.udp(ident, "127.0.0.1", port=port, timeout=2, sock=s).answer[0][0].strings[0].decode()
        r = dns.query.udp(dns.message.make_query(NAME, "A"), "127.0.0.1", port=port, timeout=2, sock=s)
        return who, sorted(rd.address for rrset in r.answer for rd in rrset)


def survey(port: int, tries: int = 64) -> dict[str, set[str]]:
    seen: dict[str, set[str]] = {}
    for _ in range(tries):
        who, ips = probe(port)
        seen.setdefault(who, set()).add(",".join(ips))
    return seen


async def test_every_worker_answers_and_sees_every_update(kubeapi: KubeAPIServer, serve) -> None:
    kubeapi.apply(namespace("app"))
    kubeapi.apply(service("app", "web", "10.96.0.10"))
    dns_server = await serve("--workers", "3")
    seen = await asyncio.to_thread(survey, dns_server.dns_port)
    assert len(seen) == 3, f"every process answers: {seen}"
    assert all(v == {"10.96.0.10"} for v in seen.values()), seen
    # one watch per resource, whatever the number of workers
    assert kubeapi.watches("services") == 1 and kubeapi.lists("services") == 1

    kubeapi.apply(service("app", "web", "10.96.0.11"))
    deadline = time.monotonic() + 5
    while True:
        seen = await asyncio.to_thread(survey, dns_server.dns_port, 32)
        if len(seen) == 3 and all(v == {"10.96.0.11"} for v in seen.values()):
            break
        assert time.monotonic() < deadline, f"not every worker saw the update: {seen}"
        await asyncio.sleep(0.05)
    assert kubeapi.watches("services") == 1
