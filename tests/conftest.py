"""Shared fixtures: one clusterdns process serving the demo and the test cluster."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from helpers import DEMO, TEST_CLUSTER, ServerProcess


@pytest.fixture(scope="session")
def cluster_server() -> Iterator[ServerProcess]:
    """The demo cluster plus tests/data/cluster.yaml, on 127.0.0.1 and ::1, port 0."""
    with ServerProcess("serve", "--manifests", str(DEMO), "--manifests", str(TEST_CLUSTER),
                       "--listen", "127.0.0.1:0", "--listen", "[::1]:0") as srv:
        yield srv
