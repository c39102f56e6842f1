"""The peers rescam is measured against in bench/peers.py, each serving the same ONNX model.

    python bench/peer_servers.py plain MODEL.onnx PORT
    python bench/peer_servers.py litserve MODEL.onnx PORT [--max-batch 16 --batch-timeout 0.005]

Both take a multipart `file` upload at POST /predict and answer the top-5 labels and scores (no
CAM, no boxes): the preprocessing a user would write (shorter side to 256, centre 224 crop,
ImageNet mean and std), in a few lines each.
"""

import argparse
import io

import litserve as ls  # pip install -e '.[bench]'
import numpy as np
import onnxruntime as ort
import uvicorn
from fastapi import FastAPI, UploadFile
from PIL import Image

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def preprocess(data: bytes, crop: int = 224, resize: int = 256) -> np.ndarray:
    image = Image.open(io.BytesIO(data)).convert("RGB")
    scale = resize / min(image.size)
    image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.BILINEAR)
    left, top = (image.width - crop) // 2, (image.height - crop) // 2
    x = np.asarray(image.crop((left, top, left + crop, top + crop)), dtype=np.float32) / 255
    return ((x - MEAN) / STD).transpose(2, 0, 1)


def top5(logits: np.ndarray) -> list[dict]:
    e = np.exp(logits - logits.max())
    probs = e / e.sum()
    return [{"index": int(i), "score": float(probs[i])} for i in np.argsort(-probs)[:5]]


def session(model: str, providers: list[str]) -> ort.InferenceSession:
    return ort.InferenceSession(model, providers=providers)


def plain(model: str, port: int, providers: list[str]) -> None:
    """The floor: FastAPI and ONNX Runtime as the FastAPI tutorial would have it."""
    app, ort_session = FastAPI(), session(model, providers)

    @app.post("/predict")
    def predict(file: UploadFile) -> dict:
        logits = ort_session.run(["logits"], {"input": preprocess(file.file.read())[None]})[0]
        return {"predictions": top5(logits[0])}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


class OnnxAPI(ls.LitAPI):
    """LitServe with its dynamic batching: decoding per request, the model once per batch."""

    def __init__(self, model: str, providers: list[str], **batching) -> None:
        super().__init__(**batching)
        self.model, self.providers = model, providers

    def setup(self, device) -> None:
        self.session = session(self.model, self.providers)

    def decode_request(self, request) -> np.ndarray:
        return preprocess(request["file"].file.read())

    def batch(self, inputs: list[np.ndarray]) -> np.ndarray:
        return np.stack(inputs)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(["logits"], {"input": x})[0]

    def unbatch(self, output: np.ndarray) -> list[np.ndarray]:
        return list(output)

    def encode_response(self, logits: np.ndarray) -> dict:
        return {"predictions": top5(logits)}


def litserve(model: str, port: int, providers: list[str], max_batch: int, batch_timeout: float) -> None:
    api = OnnxAPI(model, providers, max_batch_size=max_batch, batch_timeout=batch_timeout)
    ls.LitServer(api, accelerator="cpu", workers_per_device=1).run(
        host="127.0.0.1", port=port, log_level="warning", generate_client_file=False)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("peer", choices=["plain", "litserve"])
    p.add_argument("model")
    p.add_argument("port", type=int)
    p.add_argument("--max-batch", type=int, default=16)
    p.add_argument("--batch-timeout", type=float, default=0.005)
    p.add_argument("--providers", default="CPUExecutionProvider", help="comma-separated, as RESCAM_PROVIDERS")
    args = p.parse_args()
    providers = args.providers.split(",")
    if args.peer == "plain":
        plain(args.model, args.port, providers)
    else:
        litserve(args.model, args.port, providers, args.max_batch, args.batch_timeout)


if __name__ == "__main__":
    main()
