"""Orchestrator core: settings, bus, store, telemetry, lifecycle and the embedded stack.

No service logic lives here. Dependencies point one way: services -> orchestrator -> schemas.
Only `runtime` and `cli` (the composition root) import services.
"""
