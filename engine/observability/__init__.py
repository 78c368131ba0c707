"""Observability: Prometheus metrics (multiprocess), process/runtime stats, JSON logs."""
