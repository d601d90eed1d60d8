"""429 Too Many Requests: the next attempt waits at least Retry-After seconds."""

from __future__ import annotations

import pytest

from conftest import eventually
from kubeapi import KubeAPIServer, service


@pytest.mark.parametrize("on", ["list", "watch"])
async def test_429_retry_after_is_honoured(kubeapi: KubeAPIServer, start_source, on: str) -> None:
    if on == "list":
        fault = kubeapi.fail(429, resource="services", on="list", retry_after=1)
        rs = await start_source(wait=False, backoff_initial=0.01)
    else:
        rs = await start_source(backoff_initial=0.01)
        fault = kubeapi.fail(429, resource="services", on="watch", retry_after=1)
        kubeapi.cut_streams("services", mid_event=False)
    await eventually(lambda: fault.served, what="the 429")
    kubeapi.apply(service("app", "later", "10.96.0.8"))
    await eventually(lambda: rs.store.view("app", "later"), timeout=4, what="served after the wait")
    after = [r.at for r in kubeapi.requests if r.resource == "services" and r.type == on and r.at > fault.served[0]]
    assert after, "no retry"
    assert after[0] - fault.served[0] >= 1.0, "retried before Retry-After"
    assert after[0] - fault.served[0] < 2.0
