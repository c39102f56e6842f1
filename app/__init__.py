"""The rescam service: FastAPI + ONNX Runtime. Never imports torch."""
