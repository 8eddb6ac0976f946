# One image for every service of docker-compose.yml (coordinator, beat, distributors,
# workers, Flower); the compose `command` picks the process.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN groupadd --system --gid 10001 agents \
 && useradd --system --uid 10001 --gid agents --home-dir /app --shell /usr/sbin/nologin agents

WORKDIR /app

# Installed into site-packages; the source copy is removed so only the package is used.
# (pyproject.toml names README.md as the readme, so it must be in the build context.)
COPY pyproject.toml README.md ./
COPY project ./project
RUN pip install ".[all]" \
 && rm -rf /app/project /app/build \
 && mkdir -p /tmp/metrics \
 && chown -R agents:agents /app /tmp/metrics

USER agents

# Flower (5555) and the Prometheus endpoint of each agent (AGENTS_METRICS_PORT).
EXPOSE 5555 9100

CMD ["celery", "-A", "project", "worker", "-Q", "coordinator", "-n", "coordinator@%h", "-l", "INFO"]
