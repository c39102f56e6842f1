# The rescam API: FastAPI + ONNX Runtime (its CUDA provider when the host lends a GPU), no torch.
# Build from the repository root: docker build -f docker/api.Dockerfile -t rescam-api .
FROM python:3.11.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY app ./app
COPY models ./models
COPY training ./training
# The serving install from the README, with the libraries ONNX Runtime's CUDA provider loads (the
# gpu extra: CUDA 13, cuBLAS, cuFFT, cuRAND, cuDNN 9 wheels); the driver comes from the host.
RUN python -m venv /opt/rescam && /opt/rescam/bin/pip install --no-cache-dir ".[gpu]"

FROM python:3.11.11-slim-bookworm
RUN useradd --uid 10001 --create-home --shell /usr/sbin/nologin rescam \
    && mkdir -p /srv/registry /srv/data && chown -R rescam:rescam /srv
COPY --from=build /opt/rescam /opt/rescam
ENV PATH=/opt/rescam/bin:$PATH \
    RESCAM_REGISTRY=/srv/registry \
    RESCAM_DATA_ROOT=/srv/data \
    RESCAM_HOST=0.0.0.0 \
    PYTHONUNBUFFERED=1
USER 10001
WORKDIR /srv
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=2).status != 200)"]
# an empty registry gets the default model the package ships (seconds; no torch needed), then serve
CMD ["sh", "-c", "rescam bootstrap && exec rescam serve --host 0.0.0.0 --port 8000"]
