"""Integration tests: a service, the store or the bus against the real NATS and Postgres that
tests/conftest.py starts once per session (its `store`, `bus`, `front`, `system` and `settings`
fixtures), or an in-process `Runtime`. Every service runs inside the test's own process, so a
failure points at one place; what needs separate orchestrator processes is in tests/system."""
