"""Process wiring: each mode's stack (cluster, node-cache), the lifecycle, workers, reload."""
