# The rescam trainer: `rescam worker` runs retrain jobs with torch (PyPI's CUDA build) on the GPUs
# it is given, through torchrun when RESCAM_TRAIN_PROCESSES > 1.
# Build from the repository root: docker build -f docker/trainer.Dockerfile -t rescam-trainer .
FROM python:3.11.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY app ./app
COPY models ./models
COPY training ./training
# The training install from the README: torch first (PyPI's build carries CUDA), then the extra.
RUN python -m venv /opt/rescam \
    && /opt/rescam/bin/pip install --no-cache-dir torch==2.13.0 \
    && /opt/rescam/bin/pip install --no-cache-dir ".[train]"

FROM python:3.11.11-slim-bookworm
RUN useradd --uid 10001 --create-home --shell /usr/sbin/nologin rescam \
    && mkdir -p /srv/registry /srv/data && chown -R rescam:rescam /srv
COPY --from=build /opt/rescam /opt/rescam
ENV PATH=/opt/rescam/bin:$PATH \
    RESCAM_REGISTRY=/srv/registry \
    RESCAM_DATA_ROOT=/srv/data \
    PYTHONUNBUFFERED=1
USER 10001
WORKDIR /srv
CMD ["rescam", "worker"]
