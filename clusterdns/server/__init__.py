"""Sockets and the query hot path; knows nothing about Kubernetes."""
