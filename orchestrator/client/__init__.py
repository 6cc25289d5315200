"""A Python client of the HTTP API, for programs (and the CLI): `Client` (async, aiohttp) and
`SyncClient` (the same methods, blocking). Bodies and answers are the `schemas` models (JobSpec
in, JobCreated / JobDetail / JobView / PoolView ... out); every failure is one `ApiError`
carrying the API's `{"error": {code, message, field}}` and the status.

It imports only `schemas`, pydantic and aiohttp (tests/unit/test_seams.py holds it to that), so
a program can use it without the server's dependencies being imported, and it loads fast.

    async with Client("http://127.0.0.1:8080", token=token) as client:
        job = await client.submit(JobSpec(pool="default", payload={"command": ["make", "test"]}))
        async for chunk in client.logs(job.id, follow=True):
            sys.stdout.buffer.write(chunk)
        ended = await client.wait(job.id)
"""

from orchestrator.client.aio import Client
from orchestrator.client.calls import Call
from orchestrator.client.errors import ApiError
from orchestrator.client.sync import SyncClient

__all__ = ["ApiError", "Call", "Client", "SyncClient"]
