"""One error hierarchy. Driver exceptions are translated at the store and bus boundaries."""

from __future__ import annotations


class OrchestratorError(Exception):
    """Base of every error this project raises on purpose."""

    code = "internal"


class ConfigurationError(OrchestratorError):
    code = "configuration"


class StoreUnavailable(OrchestratorError):
    """Postgres cannot be reached, or cannot take the work right now. The work may or may not
    have been applied (a connection lost during a COMMIT): only an idempotent one is run again."""

    code = "store_unavailable"


class NothingApplied(StoreUnavailable):
    """Unavailable, and certainly nothing of the work was applied: no connection was had, the
    transaction never reached its COMMIT, or Postgres refused the statement for now (read-only,
    a statement or lock timeout). Running it again is always safe."""


class StoreError(OrchestratorError):
    """Postgres answered, but refused the query (bad data, a constraint): retrying will not help."""

    code = "store_error"


class InvalidInput(StoreError):
    """Postgres (or the driver encoding for it) refused a value as data: out of its type's range,
    a character it cannot store. The input was bad, so a request gets an error answer, never a
    retry. The schemas refuse such values first, naming the field; this is the safety net."""

    code = "invalid"


class BusUnavailable(OrchestratorError):
    code = "bus_unavailable"


class RequestFailed(OrchestratorError):
    """A request on the bus got no answer in time, or an answer saying it failed."""

    code = "request_failed"


class NoAnswer(RequestFailed):
    """A request got no answer in time: it may or may not have been handled."""


class NotFound(OrchestratorError):
    """A named thing (pool, job, runner) does not exist."""

    code = "not_found"


class NoResponders(RequestFailed):
    """Nobody serves the subject at all (as opposed to a server that did not answer in time)."""
