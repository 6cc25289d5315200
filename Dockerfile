# syntax=docker/dockerfile:1
# One image for every service: the command picks the role (`serve admission`, `serve dispatch`,
# `runner --pool P ...`, `migrate`). Configuration is the ORCH_* environment, as everywhere.

FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY orchestrator ./orchestrator
COPY services ./services
COPY schemas ./schemas
COPY app ./app
# Wheels for the project and its pinned dependencies, so the final stage needs no build tools.
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    ORCH_DATA_DIR=/var/lib/orchestrator \
    ORCH_HTTP_HOST=0.0.0.0
# Install from the build stage's wheels without keeping them in a layer.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels /wheels/orchestrator-*.whl \
    && useradd --system --uid 10001 --user-group --home-dir /var/lib/orchestrator --create-home orchestrator
# A numeric user, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
WORKDIR /var/lib/orchestrator
EXPOSE 8080
# Works for every role: `orchestrator health` reads the role from PID 1's command line and checks
# what that role needs (the api: its own /readyz; the others: NATS, JetStream, Postgres).
HEALTHCHECK --interval=10s --timeout=8s --start-period=20s --retries=3 CMD ["orchestrator", "health"]
ENTRYPOINT ["orchestrator"]
CMD ["serve", "all"]
