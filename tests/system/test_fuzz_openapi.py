"""The api against its own `/openapi.json`, by schemathesis: every operation, with generated
valid and invalid parameters and bodies, on the real server (a real port, real NATS and
Postgres). No answer may be a 5xx, and every answer must be one the document declares, with the
declared content type and schema: the document is generated from the route table, so this is
what keeps the two honest."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import schemathesis
from hypothesis import given, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from app.runtime import Runtime
from services.api.params import MAX_WAIT_S
from tests.fuzz import FUZZ, count
from tests.system.test_fuzz_http import default_pool  # noqa: F401  (a fixture)

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
EXAMPLES_PER_OPERATION = 25


def _fuzz(operation: Any, base_url: str) -> None:
    @settings(FUZZ, max_examples=EXAMPLES_PER_OPERATION)
    # Valid cases (must be answered as documented) and invalid ones (must be refused as documented).
    @given(case=operation.as_strategy(GenerationMode.POSITIVE) | operation.as_strategy(GenerationMode.NEGATIVE))
    def check(case: Any) -> None:
        count(f"openapi {operation.label}")
        if case.query and "wait" in case.query:
            case.query["wait"] = "0"  # a valid wait long-polls for up to MAX_WAIT_S: not what is checked here
        response = case.call(base_url=base_url, timeout=MAX_WAIT_S / 2)
        case.validate_response(response, checks=CHECKS)

    check()


def _run(doc: dict[str, Any], base_url: str) -> list[str]:
    """Every operation, in a thread (schemathesis calls are blocking; the server answers from the
    test's event loop); every failure collected, so one run shows all of them."""
    failures = []
    for result in schemathesis.openapi.from_dict(doc).get_all_operations():
        operation = result.ok()
        try:
            _fuzz(operation, base_url)
        except Exception as exc:
            failures.append(f"{operation.label}: {exc}")
    return failures


async def test_every_operation_answers_as_documented(front: Runtime, default_pool: None) -> None:  # noqa: F811
    assert front.http_url is not None
    async with aiohttp.ClientSession() as http, http.get(f"{front.http_url}/openapi.json") as resp:
        doc = await resp.json()
    failures = await asyncio.to_thread(_run, doc, front.http_url)
    assert not failures, "\n\n".join(failures)
