# One image for TFF workers and the trainer: the project installed from uv.lock.
#
#   docker build -f deploy/worker.Dockerfile -t tff-research .
#   docker run --rm -p 8000:8000 tff-research                       # a worker
#   docker run --rm tff-research uv run python experiments/train.py \
#       --experiment_name=x --workers=worker-0:8000,worker-1:8000  # a trainer
#
# The worker port is UNAUTHENTICATED and unencrypted (TFF's worker_binary has
# no auth or TLS): publish it only on a private network.
FROM python:3.11-slim

# uv from its official image, pinned to a minor version for reproducible builds.
COPY --from=ghcr.io/astral-sh/uv:0.5 /uv /uvx /usr/local/bin/

WORKDIR /app
ENV UV_LINK_MODE=copy UV_COMPILE_BYTECODE=1 TF_CPP_MIN_LOG_LEVEL=1 \
    PYTHONUNBUFFERED=1

# Dependencies first (cached across source edits), exactly as locked;
# no dev group (pytest) in the image.
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --frozen --no-dev --no-install-project

COPY tff_research ./tff_research
COPY experiments ./experiments
RUN uv sync --frozen --no-dev

# EMNIST clients' data: mount the same emnist_all.sqlite at the same path on
# every worker and on the trainer (SqlClientData datasets name the file by
# path, so only the path travels), e.g. -v /data/emnist:/data/emnist:ro and
# train.py --data_dir=/data/emnist.
VOLUME ["/data"]

EXPOSE 8000
# SIGTERM (docker stop, Kubernetes) stops the worker and exits 0.
STOPSIGNAL SIGTERM
CMD ["uv", "run", "--frozen", "--no-dev", "python", "-m", "tff_research.cli.worker", "--port=8000"]
