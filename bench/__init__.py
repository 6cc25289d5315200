"""Benchmarks that start their own servers: `python -m bench.<name>`."""
