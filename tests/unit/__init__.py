"""Unit tests: pure functions and static checks of the source tree and the deployment files. No
server, no fixture from tests/conftest.py that starts one, no orchestrator process: the whole
folder runs in seconds (`pytest tests/unit`), so a rule can be checked on every edit. A few static
checks run a checker binary (compose's loader, hadolint) over a file; none starts a service."""
