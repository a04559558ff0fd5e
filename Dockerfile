# syntax=docker/dockerfile:1
#
# The Pylon image: the four services (ingest, scheduler, registry, gateway), the scheduler's
# leader, the Kubernetes operator, and the CPU Ray nodes (head and workers) the scheduler and
# ingest run work on. A Ray driver and every node must run the same Ray and the same Python, to
# the patch release, so Dockerfile.gpu pins both to the same versions as this file.
#
#   docker build -t pylon:dev .
#   docker run --rm -e PYLON_PORT=50051 -p 50051:50051 pylon:dev pylon_services.gateway
#   docker run --rm pylon:dev pylon_services.scheduler.leader   # joins Ray: see docker-compose.yml
#   docker run --rm pylon:dev pylon_operator                    # the operator (operators/)
#   docker run --rm --entrypoint ray pylon:dev start --head --block --port=6379
#
# Settings come from PYLON_* environment variables (services/pylon_services/runtime/settings.py;
# docs/operations.md lists them). Linted with hadolint (.hadolint.yaml);
# .github/workflows/images.yml builds it.

# Exact tags: the Python patch release must equal Dockerfile.gpu's (Ray refuses a mismatch).
ARG PYTHON_VERSION=3.11.13

# ---- build: one virtualenv with torch (CPU), Ray and the Pylon packages -------------------------
FROM python:${PYTHON_VERSION}-slim-bookworm AS build

# services/pyproject.toml pins torch==2.13.0; from PyPI, Linux x86_64 gets the multi-GB CUDA
# build, so torch comes first from the CPU index and "2.13.0+cpu" then satisfies the pin.
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# The Ray every node of a cluster runs (services/pyproject.toml allows a range).
ARG RAY_VERSION=2.60.0

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/pylon
ENV PATH=/opt/pylon/bin:$PATH

RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"

# Only the packages: the rest of the repository stays out of the image (.dockerignore).
COPY sdk/ /src/sdk/
COPY services/ /src/services/
RUN pip install /src/sdk /src/services "ray[default]==${RAY_VERSION}"
# The operator is a package of its own (operators/pyproject.toml, `python -m pylon_operator`).
COPY operators/ /src/operators/
RUN if [ -f /src/operators/pyproject.toml ]; then pip install /src/operators; fi \
    && python -c "import pylon, pylon_services, ray, torch; print('torch', torch.__version__, 'ray', ray.__version__)"

# ---- runtime --------------------------------------------------------------------------------------
FROM python:${PYTHON_VERSION}-slim-bookworm

LABEL org.opencontainers.image.title="pylon" \
      org.opencontainers.image.description="Pylon ML platform: services, scheduler leader, operator and CPU Ray nodes" \
      org.opencontainers.image.licenses="Apache-2.0"

COPY --from=build /opt/pylon /opt/pylon

# A fixed numeric uid so Kubernetes runAsNonRoot can verify it; its home holds Ray's and Python's
# per-user files. Ray's session files and ingest's upload spool go to /tmp.
RUN useradd --create-home --home-dir /home/pylon --uid 10001 --user-group --shell /bin/sh pylon

ENV PATH=/opt/pylon/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    RAY_USAGE_STATS_ENABLED=0 \
    PYLON_HOST=0.0.0.0 \
    PYLON_PORT=50051 \
    PYLON_METRICS_PORT=9090

USER 10001:10001
WORKDIR /home/pylon

# gRPC: gateway 50051, ingest 50052, scheduler 50053, registry 50054 (by convention; PYLON_PORT
# decides). Prometheus metrics on PYLON_METRICS_PORT. Ray head GCS on 6379.
EXPOSE 50051 50052 50053 50054 9090 6379

# SIGTERM -> NOT_SERVING -> drain up to PYLON_SHUTDOWN_GRACE_S -> exit; give the container a stop
# timeout longer than that grace (docker-compose.yml: stop_grace_period).
STOPSIGNAL SIGTERM

# `docker run pylon:dev pylon_services.registry` picks the process; the gateway by default.
ENTRYPOINT ["python", "-m"]
CMD ["pylon_services.gateway"]
