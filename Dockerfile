# syntax=docker/dockerfile:1
#
# One image for every Pylon process: the four services (ingest, scheduler, registry, gateway)
# and the Ray nodes the scheduler submits work to (Ray driver and workers must run the same Ray
# and Python versions, so they share this image).
#
#   docker build -t pylon:dev .
#   docker run --rm -e PYLON_PORT=50051 -p 50051:50051 pylon:dev pylon_services.gateway
#   docker run --rm --entrypoint ray pylon:dev start --head --block --port=6379
#
# Settings come from PYLON_* environment variables (services/pylon_services/runtime/settings.py);
# docker-compose.yml and docs/operations.md list them.
#
# Checked here with hadolint (no Docker engine on the development machine); the pip step's
# dependency set was resolved for linux/amd64 + CPython 3.11 with binary wheels only, so the slim
# image needs no compiler.

ARG PYTHON_VERSION=3.11

# ---- build: a virtualenv with torch (CPU) and the two Pylon packages --------------------------
FROM python:${PYTHON_VERSION}-slim AS build

# services/pyproject.toml pins torch==2.13.0. From PyPI, Linux x86_64 gets the multi-GB CUDA
# build, so torch comes first from the CPU index; "2.13.0+cpu" then satisfies the pin and the
# next step does not fetch torch again. For a CUDA image, point TORCH_INDEX_URL at a CUDA index.
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/pylon
ENV PATH=/opt/pylon/bin:$PATH

RUN pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"

# Only what the packages need: the rest of the repository stays out of the image.
COPY sdk/ /src/sdk/
COPY services/ /src/services/
RUN pip install --no-cache-dir /src/sdk /src/services \
    && python -c "import pylon, pylon_services, ray, torch; print('torch', torch.__version__, 'ray', ray.__version__)"

# ---- runtime -----------------------------------------------------------------------------------
FROM python:${PYTHON_VERSION}-slim

LABEL org.opencontainers.image.title="pylon" \
      org.opencontainers.image.description="Pylon ML platform: ingest, scheduler, registry and gateway services, and Ray nodes" \
      org.opencontainers.image.licenses="Apache-2.0"

COPY --from=build /opt/pylon /opt/pylon

# A fixed numeric uid so Kubernetes runAsNonRoot can verify it; its home holds Ray's and
# Python's per-user files. Ray's session files and ingest's upload spool go to /tmp.
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

# SIGTERM -> NOT_SERVING -> drain up to PYLON_SHUTDOWN_GRACE_S -> exit; give the container a
# stop timeout longer than that grace (docker-compose.yml: stop_grace_period).
STOPSIGNAL SIGTERM

# `docker run pylon:dev pylon_services.registry` picks the service; gateway by default.
ENTRYPOINT ["python", "-m"]
CMD ["pylon_services.gateway"]
