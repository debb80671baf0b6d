# syntax=docker/dockerfile:1
# Haku's operator image, for those with a Docker engine (or BuildKit) and a registry:
#
#   docker build -t registry.example.com/haku:0.1.0 . && docker push registry.example.com/haku:0.1.0
#
# Without either, Haku writes an equivalent image itself: `haku dev build operator-image`
# (docs/dev-cluster.md, "Operator image"). Both run `python3 -m haku operator run` as
# 65532:65532, with nothing written outside /tmp (fine with readOnlyRootFilesystem and an
# emptyDir on /tmp).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python3 -m venv /opt/haku
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
# The wheel, then it and its runtime dependencies into the venv (pip precompiles them).
RUN /opt/haku/bin/pip wheel --no-deps --wheel-dir /wheels . \
 && /opt/haku/bin/pip install /wheels/haku-*.whl \
 && /opt/haku/bin/python -c "import haku, lightkube, cryptography, psycopg, grpc, aiomysql"

FROM ${PYTHON_IMAGE}
RUN groupadd --gid 65532 haku \
 && useradd --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin haku \
 && find / -xdev -type f -perm /6000 -exec chmod ug-s {} +
COPY --from=builder /opt/haku /opt/haku
ENV PATH=/opt/haku/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 65532:65532
ENTRYPOINT ["python3", "-m", "haku"]
CMD ["operator", "run"]
