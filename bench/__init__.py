"""Benchmarks: `python -m bench` (all, with the goals) or `python -m bench.<name>` from the
repository root, each on its own embedded stack; results in `bench-results/`. Also the process
helpers (`procs`) the system tests share.

Not part of the wheel. May import the product (`app`, `orchestrator`, `services`, `schemas`);
nothing in the product imports it, and it imports no test.
"""
