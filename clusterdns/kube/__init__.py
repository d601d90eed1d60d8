"""Kubernetes objects -> record store; knows nothing about DNS wire format."""
