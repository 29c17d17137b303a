# One image for every logagg process (api, bridge, publish): the command picks
# which, and the default is the HTTP sidecar. compose.yaml runs the whole system.
FROM python:3.11-slim

# No .pyc files or pip cache in the layers; unbuffered output so `docker logs`
# is live. The store defaults to the /data volume (the code's default is a
# path relative to the working directory).
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    LOGAGG_STORE=sqlite:////data/logagg.db

# Run as a fixed non-root user. /data is created here and owned by that user:
# Docker copies this ownership into an empty named volume mounted there.
# (--no-log-init: a high uid would otherwise bloat the image's lastlog file.)
RUN groupadd --gid 10001 logagg \
    && useradd --no-log-init --create-home --uid 10001 --gid 10001 logagg \
    && mkdir /data \
    && chown logagg:logagg /data

WORKDIR /app

# Dependencies first, from the hashed lock (requirements/run.txt, made by
# `make lock`), in a layer that is rebuilt only when the lock changes: every
# image gets the versions CI tested. tests/test_packaging.py replays every
# `RUN pip` step below, with these COPYs, in a fresh venv.
COPY requirements/run.txt requirements/
RUN pip install --no-cache-dir --require-hashes --no-deps -r requirements/run.txt

# Then the code, without touching the dependencies: every package that
# pyproject.toml lists (the test fails if one is missing here).
COPY bridge/ bridge/
COPY api/ api/
COPY publisher/ publisher/
COPY bench/ bench/
COPY logagg/ logagg/
COPY supervise/ supervise/
COPY pyproject.toml ./
RUN pip install --no-cache-dir --no-deps . \
    && rm -rf build ./*.egg-info

# Numeric, so runtimes (Kubernetes runAsNonRoot) can verify it is not root.
USER 10001:10001
EXPOSE 8080

# slim has no curl: Python asks /healthz, and urlopen raises (exit 1) on an
# error status or no answer.
HEALTHCHECK --interval=10s --timeout=5s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4)"]

CMD ["logagg", "api", "--host", "0.0.0.0", "--port", "8080"]
