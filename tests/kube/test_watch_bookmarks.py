"""BOOKMARK events advance the resourceVersion, so a resume after compaction needs no re-list."""

from __future__ import annotations

from conftest import eventually
from kubeapi import KubeAPIServer, service


async def test_bookmark_version_lets_the_watch_resume_after_compaction(kubeapi: KubeAPIServer, start_source) -> None:
    """Other kinds' changes move the global version; only a bookmark tells this watch."""
    rs = await start_source()
    listed = rs.state("services").version
    for i in range(5):  # changes to another resource: no services event carries the version
        kubeapi.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": f"ns{i}"}})
    now = str(kubeapi.rv)
    await eventually(lambda: rs.state("services").version == now, what="bookmark version")
    assert listed != now and rs.state("services").events == 0

    kubeapi.compact()  # history before `now` is gone: only the bookmark version still works
    kubeapi.cut_streams("services", mid_event=False)
    kubeapi.apply(service("app", "after", "10.96.0.5"))
    await eventually(lambda: rs.store.view("app", "after"), what="event after resume")
    assert kubeapi.lists("services") == 1, "bookmarks should have avoided a re-list"
