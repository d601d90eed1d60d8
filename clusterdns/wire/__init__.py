"""DNS bytes <-> Python; knows nothing about Kubernetes or sockets."""
