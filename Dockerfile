# syntax=docker/dockerfile:1
# Multi-stage: build a virtual environment from the lock file, then copy it
# into a small runtime image that runs as an unprivileged user.
FROM python:3.11.10-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/replicator
COPY requirements.runtime.lock ./
RUN /opt/replicator/bin/pip install --require-virtualenv -r requirements.runtime.lock
COPY pyproject.toml README.md ./
COPY replicator ./replicator
COPY migrations ./migrations
RUN /opt/replicator/bin/pip install --require-virtualenv --no-deps . \
 && /opt/replicator/bin/replicator --version

FROM python:3.11.10-slim-bookworm
RUN groupadd --system --gid 10001 replicator \
 && useradd --system --uid 10001 --gid replicator --home-dir /var/lib/replicator \
      --shell /usr/sbin/nologin replicator
COPY --from=build /opt/replicator /opt/replicator
COPY config/replicator.example.toml /etc/replicator/replicator.example.toml
# Inside a container the scrape comes from another container: listen on all
# interfaces here (the default elsewhere is 127.0.0.1).
ENV PATH=/opt/replicator/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    DATABASE_PATH=/data/app.db \
    REPLICATOR_LOG_FORMAT=json \
    REPLICATOR_METRICS_ADDRESS=0.0.0.0:9479
USER replicator
# The application's SQLite file and its -wal/-shm: mount read-write for
# trigger capture, read-only (":ro") for cursor capture.
VOLUME ["/data"]
EXPOSE 9479
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9479/healthz', timeout=4).status == 200 else 1)"]
ENTRYPOINT ["replicator"]
CMD ["run"]
