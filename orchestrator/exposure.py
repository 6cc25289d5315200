"""No open door: the api does not serve beyond loopback with auth off.

With no token configured every route is open, and whoever can submit a job runs any command on
the runners. That is the embedded default on 127.0.0.1, where only this machine's users reach it;
on any other address (0.0.0.0 and :: included: every interface) a process serving the api
refuses to start (ConfigurationError: the CLI exits with status 2) unless ORCH_ALLOW_INSECURE is
set, and then says at every start that the door is open.

Loopback means an address in 127.0.0.0/8, ::1 (an IPv4-mapped 127.x too), or the name
`localhost`; any other name may resolve anywhere, so it counts as open.
"""

from __future__ import annotations

import ipaddress

from orchestrator.errors import ConfigurationError
from orchestrator.settings import HttpSettings

TOKEN_VARIABLES = "ORCH_PRODUCER_TOKENS, ORCH_RUNNER_TOKENS or ORCH_OPERATOR_TOKENS"


def is_loopback(host: str) -> bool:
    """Whether `host` (an ORCH_HTTP_HOST value) is reachable from this machine only."""
    name = host.strip().removeprefix("[").removesuffix("]").rstrip(".").lower()
    if name == "localhost":
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:  # a name, or nothing ("" binds every interface)
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def open_door(http: HttpSettings) -> str | None:
    """Refuse (ConfigurationError) to serve the api beyond loopback with no token, unless
    `allow_insecure`; then the warning to log at start. None when the door is not open."""
    if is_loopback(http.http_host) or http.api_tokens():
        return None
    where = f"{http.http_host or '(every interface)'}:{http.http_port}"
    if not http.allow_insecure:
        raise ConfigurationError(
            f"refusing to serve the api on {where} with no token: anyone who reaches that address could "
            f"submit jobs, and so run any command on the runners. Set {TOKEN_VARIABLES} (comma-separated "
            "bearer tokens; see README, The HTTP API), or serve on loopback (ORCH_HTTP_HOST=127.0.0.1), or, "
            "on a network where everyone may run anything, set ORCH_ALLOW_INSECURE=true"
        )
    return (
        f"ORCH_ALLOW_INSECURE=true: the api on {where} has no token and is open to anyone who reaches the "
        f"address (they can run any command on the runners); set {TOKEN_VARIABLES} to close it"
    )
