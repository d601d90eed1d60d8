"""Observability: health, readiness, metrics, logs."""
