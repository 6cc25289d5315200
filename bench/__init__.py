"""Benchmarks: `python -m bench.<name>` from the repository root, each on its own embedded stack."""
