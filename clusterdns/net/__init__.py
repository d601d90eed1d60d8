"""Sockets and addresses below the DNS layer: the one HOST:PORT grammar, batched UDP I/O."""
