"""Answering questions: one module per zone kind (cluster zone, later cache and forward)."""
