"""Names outside the cluster zone: upstream pools, the forwarder policy, the forward table."""
