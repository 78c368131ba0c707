# syntax=docker/dockerfile:1
# The Nexus engine image: `nexus serve` on 8080 (HTTP API) and 4004 (Prometheus /metrics).
# Runs as the non-root user/group 500:500 that the Helm chart's podSecurityContext expects;
# the root filesystem can be read-only: the engine writes only to /app/var and /tmp.

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml setup.cfg README.md ./
COPY engine ./engine
RUN python -m venv /opt/nexus \
 && /opt/nexus/bin/pip install --upgrade pip \
 && /opt/nexus/bin/pip install .

FROM python:3.11-slim
LABEL org.opencontainers.image.title="nexus" \
      org.opencontainers.image.description="Nexus Digital Channels engine" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH="/opt/nexus/bin:${PATH}" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    NEXUS_CONFIG=/app/config \
    NEXUS_LOG_FORMAT=json
RUN groupadd --system --gid 500 nexus \
 && useradd --system --uid 500 --gid 500 --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin nexus
COPY --from=build /opt/nexus /opt/nexus
WORKDIR /app
COPY --chown=500:500 config ./config
COPY --chown=500:500 scxml ./scxml
COPY --chown=500:500 schemas ./schemas
RUN mkdir -p /app/var && chown 500:500 /app /app/var
USER 500:500
EXPOSE 8080 4004
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/health', timeout=4).status == 200 else 1)"]
ENTRYPOINT ["nexus"]
CMD ["serve"]
