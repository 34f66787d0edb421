# syntax=docker/dockerfile:1
# One image for every Residuals service; each container picks its entrypoint:
#   python -m residuals.<licensing|ingest|meter|ledger|payouts|alerts>
#   residuals migrate | residuals deploy init          (one-shot jobs)
# Build at the repository root:  docker build -t residuals:0.1.0 .
# Non-root (uid 10001), read-only-root friendly (writes only to /tmp), no compiler in the
# final stage: dependencies come as manylinux wheels built in the first stage.

# Exact tag; pin the digest too in your registry mirror (PYTHON_IMAGE=python@sha256:...).
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# Dependencies first, at the exact versions of deploy/requirements.lock (`residuals deploy
# lock`): repeatable builds, and this layer stays cached while only the code changes.
COPY deploy/requirements.lock ./
RUN pip wheel --no-deps --wheel-dir /wheels --requirement requirements.lock
COPY pyproject.toml README.md ./
COPY services ./services
RUN pip wheel --no-deps --wheel-dir /wheels .

FROM ${PYTHON_IMAGE} AS runtime
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="residuals" \
      org.opencontainers.image.description="Per-use royalty metering: licensing, ingest, meter, ledger, payouts, alerts" \
      org.opencontainers.image.version="${VERSION}"
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    METRICS_PORT=9464 \
    GRPC_PORT=50051
# Statement documents (payouts/documents): WeasyPrint loads Pango and HarfBuzz's subsetter
# at run time and needs a font. Not pinned: the base image tag fixes the Debian release,
# and a pin would refuse the security updates Debian ships within it.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
       libpango-1.0-0 libpangoft2-1.0-0 libharfbuzz-subset0 fonts-dejavu-core \
    && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 residuals \
    && useradd --system --uid 10001 --gid residuals --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin residuals
# The wheels are bind-mounted from the build stage, so they never become a layer here.
# --no-index: only the locked wheels can satisfy the package's requirements; pip check
# fails the build if they do not fit together.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels /wheels/residuals-*.whl \
    && pip check
WORKDIR /tmp
USER 10001:10001
EXPOSE 50051 9464
CMD ["residuals", "--help"]
