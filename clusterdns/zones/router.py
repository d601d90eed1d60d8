"""Which part of the server answers a name: the cluster zone, or nobody (REFUSED).

The seam for forwarding: names no authoritative zone owns go to `fallback` when one
is configured (a later forwarder), else they are refused.
"""

from __future__ import annotations

from clusterdns.zones.kubernetes import ClusterZone


class Router:
    def __init__(self, cluster: ClusterZone | None) -> None:
        self.cluster = cluster

    def zone_for(self, name: str) -> ClusterZone | None:
        """The authoritative zone for a lowercased name, or None."""
        if self.cluster is not None and self.cluster.apex_of(name) is not None:
            return self.cluster
        return None
