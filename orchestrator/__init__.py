"""Orchestrator core: settings, the bus (the only importer of nats-py), the store (the only
importer of asyncpg, with the job state machine's transitions and their outbox), telemetry, the
service lifecycle, the provisioner contract and the embedded dev stack.

No service logic lives here. May import `schemas`; never `services` nor `app`.
"""
