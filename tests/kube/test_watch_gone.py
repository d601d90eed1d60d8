"""410 Gone (as an ERROR event or as an HTTP status) re-lists and replaces the kind at once."""

from __future__ import annotations

import pytest

from conftest import eventually
from kubeapi import KubeAPIServer, endpoint_slice, service


@pytest.mark.parametrize("gone_as", ["event", "http"])
async def test_gone_relists_and_drops_objects_deleted_meanwhile(kubeapi: KubeAPIServer, start_source,
                                                               gone_as: str) -> None:
    kubeapi.gone_as = gone_as
    for name in ("keep", "drop"):
        kubeapi.apply(service("app", name, "10.96.0.1" if name == "keep" else "10.96.0.2"))
        kubeapi.apply(endpoint_slice("app", f"{name}-1", name, ["10.244.0.1"]))
    rs = await start_source()
    assert rs.store.view("app", "drop") is not None

    kubeapi.silence("services")  # the watch hears nothing more ...
    kubeapi.silence("endpointslices")
    kubeapi.delete("services", "app", "drop")  # ... while objects go away
    kubeapi.delete("endpointslices", "app", "drop-1")
    kubeapi.apply(service("app", "new", "10.96.0.3"))
    kubeapi.compact()  # and their history with them
    kubeapi.silence("services", on=False)  # streams end; the resume finds its version too old
    kubeapi.silence("endpointslices", on=False)

    await eventually(lambda: kubeapi.lists("services") == 2 and kubeapi.lists("endpointslices") == 2, what="re-lists")
    await eventually(lambda: rs.store.view("app", "new") is not None, what="re-listed state")
    assert rs.store.view("app", "drop") is None and ("app", "drop-1") not in rs.store.slices
    assert rs.store.view("app", "keep").backends[0].ip == "10.244.0.1"
    assert kubeapi.lists("namespaces") == 1  # only the resources that got 410
    assert any(r.status == 410 for r in kubeapi.requests) == (gone_as == "http")
    assert not rs.source.outage and rs.state("services").failures == 0


async def test_relist_is_one_atomic_swap(kubeapi: KubeAPIServer, start_source) -> None:
    """Listeners see one change for the whole re-list: no half-replaced state is visible."""
    for i in range(20):
        kubeapi.apply(service("app", f"s{i}", f"10.96.1.{i + 1}"))
    rs = await start_source(page_size=3)
    notified: list[int] = []
    rs.store.subscribe(lambda changes: notified.append(len(rs.store.services)))
    kubeapi.silence("services")
    for i in range(10):
        kubeapi.delete("services", "app", f"s{i}")
    kubeapi.compact()
    kubeapi.silence("services", on=False)
    await eventually(lambda: kubeapi.lists("services") == 2 and notified, what="re-list applied")
    assert notified == [10], "one notification, with the whole new state"
