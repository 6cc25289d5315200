"""Jobs belong to their tenant when a tenant's token asks (issue 21): a producer token bound to
a tenant (`ORCH_TENANT_TOKENS`) submits that tenant's jobs only, and sees, follows and cancels no
other tenant's. Another tenant's job answers exactly as a job that does not exist (404), so its
id tells nothing. Any other token, and no auth at all, sees every job, as before."""

from __future__ import annotations

from aiohttp import web

from schemas.jobs import JobSpec
from services.api.auth import TENANT
from services.api.responses import error_response


def bound_tenant(request: web.Request) -> str | None:
    """The tenant the caller's token is bound to, or None (it may see every tenant)."""
    return request.get(TENANT)


def owned(request: web.Request, spec: JobSpec, field: str = "tenant") -> JobSpec | web.Response:
    """`spec` as the caller may submit it: a bound caller's job is its tenant's (the tenant given
    if none was), and naming another tenant is refused (403, naming `field`)."""
    tenant = bound_tenant(request)
    if tenant is None or spec.tenant == tenant:
        return spec
    if spec.tenant is None:
        return spec.model_copy(update={"tenant": tenant})
    return error_response(403, "forbidden", f"this token submits jobs of tenant {tenant!r} only", field)


def visible(request: web.Request, job_tenant: str | None) -> bool:
    """Whether the caller may see a job of `job_tenant`."""
    tenant = bound_tenant(request)
    return tenant is None or job_tenant == tenant
