"""From a model's outputs to what an answer says: calibrated scores and the open-world verdict.

Pure numpy, and the one place that turns outputs into scores: the predictor, the comparison, the
report, the live model's figures behind the promotion gate and the benchmarks all call `Scorer`.

- Calibration (Guo et al. 2017): one temperature T, fitted at export on the validation logits by
  their negative log-likelihood; a score is softmax(logits / T). The uncalibrated softmax stays
  available (`raw`).
- Out of distribution (Sun et al. 2022, "Out-of-distribution detection with deep nearest
  neighbors"): the score of an image is 1 - the cosine similarity of its features (every stage's
  pooled output at unit length, side by side: the graph's `features`) to the k-th nearest of the
  training images' (the bank, `ood.npz` beside the model), so 0 is a training image. Its
  threshold calls at most 5% of new images of the model's classes unknown, with 95% confidence
  (tolerance_threshold, on the validation images). Chosen by measurement over softmax, energy,
  max-logit, Mahalanobis and the last stage's features alone (BENCHMARKS.md, "Open world").
  Where the bank also holds made-up outliers (the embedded shapes and shuffled tiles of training
  images, for a model of other data), an image nearer its nearest outlier than its k-th training
  image scores that much higher (`contrasted`): the drawn marks that sit among a small set's
  training images move out, and images far from both are scored as before (BENCHMARKS.md, "Made-up
  outliers in the bank").
  A version exported before this (no features output, no bank) is scored by its energy and has
  no threshold: its answers say `unknown: null` and `method: energy`.
"""

from __future__ import annotations

import hashlib
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

OOD_FILE = "ood.npz"
ECE_BINS = 15
TPR = 0.95  # the share of new images of the model's classes the threshold keeps known, at least
CONFIDENCE = 0.95  # how sure tolerance_threshold is of that, from the validation images alone


class OpenWorldError(ValueError):
    """An OOD file that does not match its card; the message says how."""


def top2_gap(logits: np.ndarray) -> np.ndarray:
    """Per image, its top logit minus its second: how near a tie its answer is."""
    top2 = np.sort(logits, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of (n, classes) logits divided by `temperature`, in float64."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def energy(logits: np.ndarray) -> np.ndarray:
    """-logsumexp of each row: low for a confident in-distribution image (Liu et al. 2020)."""
    z = np.asarray(logits, dtype=np.float64)
    m = z.max(axis=-1)
    return -(m + np.log(np.exp(z - m[..., None]).sum(axis=-1)))


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    p = softmax(logits, temperature)[np.arange(len(labels)), labels]
    return float(-np.log(np.clip(p, 1e-300, None)).mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature minimising the validation NLL (searched on log T over [0.05, 20])."""
    from scipy.optimize import minimize_scalar

    found = minimize_scalar(lambda t: nll(logits, labels, math.exp(t)), bounds=(math.log(0.05), math.log(20.0)),
                            method="bounded")
    return float(math.exp(found.x))


def ece(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """Expected calibration error: the confidence-weighted gap between confidence and accuracy in
    `bins` equal-width bins of the top score."""
    return top_score_ece(probs.max(axis=1), probs.argmax(axis=1) == labels, bins)


def top_score_ece(confidence: np.ndarray, right: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE from each answer's top score and whether that answer was right."""
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    gap = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            gap += inside.mean() * abs(confidence[inside].mean() - right[inside].mean())
    return float(gap)


def chance_ece(confidence: np.ndarray, bins: int = ECE_BINS, draws: int = 200, seed: int = 0) -> float:
    """The ECE a perfectly calibrated model giving these top scores would still show on this many
    images: each answer drawn right with the probability it states, `draws` times, the mean. A
    measured ECE near it cannot be told from luck, so it says how far a small validation set can
    judge calibration at all."""
    rng = np.random.default_rng(seed)
    confidence = np.asarray(confidence, dtype=np.float64)
    return float(np.mean([top_score_ece(confidence, rng.random(len(confidence)) < confidence, bins)
                          for _ in range(draws)]))


def reliability(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> list[dict[str, float]]:
    """Per bin of the top score: its count, mean confidence and accuracy (the reliability diagram)."""
    confidence, right = probs.max(axis=1), probs.argmax(axis=1) == labels
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    return [{"bin": b / bins, "count": int((which == b).sum()),
             "confidence": float(confidence[which == b].mean()) if (which == b).any() else None,
             "accuracy": float(right[which == b].mean()) if (which == b).any() else None} for b in range(bins)]


def l2_normalised(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def knn_distance(features: np.ndarray, bank: np.ndarray, k: int) -> np.ndarray:
    """1 - cosine similarity of each row of `features` to its k-th nearest row of `bank` (rows
    already unit length)."""
    similarity = l2_normalised(features) @ (bank if bank.dtype == np.float32 else bank.astype(np.float32)).T
    k = min(k, bank.shape[0])
    return 1.0 - np.partition(similarity, -k, axis=1)[:, -k].astype(np.float64)


def contrasted(to_training: np.ndarray, to_outliers: np.ndarray) -> np.ndarray:
    """The distance to the training images, plus how much nearer the image is to a made-up outlier."""
    return to_training + np.maximum(0.0, to_training - to_outliers)


def auroc(known: np.ndarray, unknown: np.ndarray) -> float:
    """The probability that an unknown image scores above a known one (ties count half)."""
    from scipy.stats import rankdata

    ranks = rankdata(np.concatenate([known, unknown]))
    n0, n1 = len(known), len(unknown)
    return float((ranks[n0:].sum() - n1 * (n1 + 1) / 2) / (n0 * n1))


def tolerance_threshold(known: np.ndarray, tpr: float = TPR, confidence: float = CONFIDENCE) -> tuple[float, int]:
    """The OOD threshold that keeps at least `tpr` of new images like `known` (validation scores)
    known, with `confidence`; and how many of `known` lie above it. The plain `tpr` quantile of
    1,000 validation scores calls more than 1 - tpr of new images unknown about half the time (its
    share moves by 0.7 points from draw to draw). Here the threshold is the score with m of `known`
    above it, m the largest count that a true share of 1 - tpr above would undercut in at most
    1 - confidence of draws: P(Binomial(n, 1 - tpr) <= m) <= 1 - confidence (a one-sided tolerance
    bound from order statistics, Wilks 1941). Too few scores for any m (59 at 95% / 95%): the largest."""
    from scipy.stats import binom

    scores = np.sort(np.asarray(known, dtype=np.float64))
    n, miss = len(scores), 1.0 - tpr
    above = int(binom.ppf(1.0 - confidence, n, miss))
    while above > 0 and binom.cdf(above, n, miss) > 1.0 - confidence:
        above -= 1
    return float(scores[n - 1 - above]), above


def fpr_at_tpr(known: np.ndarray, unknown: np.ndarray, tpr: float = TPR) -> float:
    """The share of unknown images still called known when the threshold keeps `tpr` of the known."""
    return float((unknown <= np.quantile(known, tpr)).mean())


def bank_bytes(bank: np.ndarray, outliers: np.ndarray | None = None) -> bytes:
    buf = io.BytesIO()
    extra = {} if outliers is None else {"outliers": outliers.astype(np.float16)}
    np.savez(buf, bank=bank.astype(np.float16), **extra)
    return buf.getvalue()


def file_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class OodSpec:
    """The card's `ood` entry: the method, its file and threshold."""

    method: str  # "knn"
    k: int
    file: str
    sha256: str
    bytes: int
    threshold: float
    tpr: float = TPR
    outliers: int = 0  # made-up outliers' features in the file beside the bank (see contrasted)

    @classmethod
    def from_card(cls, d: Any) -> OodSpec | None:
        if not isinstance(d, dict) or d.get("method") != "knn":
            return None
        try:
            return cls("knn", int(d["k"]), str(d["file"]), str(d["sha256"]), int(d["bytes"]), float(d["threshold"]),
                       float(d.get("tpr", TPR)), int(d.get("outliers", 0)))
        except (KeyError, TypeError, ValueError):
            return None

    def check_file(self, directory: Path) -> bytes:
        """The OOD file's bytes when they are the ones the card names; OpenWorldError otherwise."""
        path = Path(directory) / self.file
        try:
            data = path.read_bytes()
        except OSError as e:
            raise OpenWorldError(f"its OOD file {self.file} cannot be read: {e.strerror or e}") from None
        if len(data) != self.bytes or file_digest(data) != self.sha256:
            raise OpenWorldError(f"its OOD file {self.file} is not the one its card names "
                                 f"({len(data)} bytes, the card says {self.bytes}; or another SHA-256)")
        return data


@dataclass(frozen=True)
class Verdict:
    """One image: calibrated and raw scores, and whether it looks like the model's training data."""

    probs: np.ndarray  # (classes,) calibrated
    raw: np.ndarray  # (classes,) softmax at temperature 1
    ood_score: float
    unknown: bool | None  # None: no threshold (a version exported without open-world files)

    @property
    def predicted(self) -> int:
        return int(self.probs.argmax())

    def top(self, k: int) -> list[int]:
        return [int(i) for i in np.argsort(-self.probs, kind="stable")[:k]]


class Scorer:
    """A version's scoring: its temperature and OOD detector (or the fallback for older versions)."""

    def __init__(self, temperature: float | None = None, spec: OodSpec | None = None, bank: np.ndarray | None = None,
                 outliers: np.ndarray | None = None) -> None:
        self.temperature = temperature
        self.spec = spec if bank is not None else None
        # float32 and C-contiguous once, not per request: its transpose is then BLAS's own layout
        self.bank = None if bank is None else np.ascontiguousarray(bank, dtype=np.float32)
        self.outliers = None if outliers is None or bank is None else np.ascontiguousarray(outliers, dtype=np.float32)

    @classmethod
    def load(cls, directory: Path, temperature: float | None, spec: OodSpec | None) -> Scorer:
        """A version's scorer; OpenWorldError when the card names an OOD file that is missing,
        damaged or not a bank of unit feature vectors."""
        if spec is None:
            return cls(temperature)
        data = spec.check_file(directory)
        try:
            with np.load(io.BytesIO(data)) as z:
                bank = np.asarray(z["bank"], dtype=np.float32)
                outliers = np.asarray(z["outliers"], dtype=np.float32) if spec.outliers else None
        except (OSError, ValueError, KeyError) as e:
            raise OpenWorldError(f"its OOD file {spec.file} is not a feature bank: {e}") from None
        if bank.ndim != 2 or not len(bank) or not np.isfinite(bank).all():
            raise OpenWorldError(f"its OOD file {spec.file} holds {bank.shape}, not (images, features)")
        wrong = outliers is not None and outliers.shape != (spec.outliers, bank.shape[1])
        if wrong or (outliers is not None and not np.isfinite(outliers).all()):
            raise OpenWorldError(f"its OOD file {spec.file} holds outliers of {outliers.shape}, not the card's "
                                 f"({spec.outliers}, {bank.shape[1]})")
        return cls(temperature, spec, bank, outliers)

    @property
    def calibrated(self) -> bool:
        return self.temperature is not None

    @property
    def method(self) -> str:
        if self.spec is None:
            return "energy"
        made_up = f", {len(self.outliers)} made-up outliers" if self.outliers is not None else ""
        return f"knn (k={self.spec.k}, {len(self.bank)} training images{made_up})"

    @property
    def threshold(self) -> float | None:
        return self.spec.threshold if self.spec else None

    @property
    def feature_size(self) -> int | None:
        return self.bank.shape[1] if self.bank is not None else None

    def ood_scores(self, logits: np.ndarray, features: np.ndarray | None) -> np.ndarray:
        """(n,) higher for images less like the training data."""
        if self.spec is None or features is None:
            return energy(logits)
        to_training = knn_distance(features, self.bank, self.spec.k)
        if self.outliers is None:
            return to_training
        return contrasted(to_training, knn_distance(features, self.outliers, 1))

    def verdicts(self, logits: np.ndarray, features: np.ndarray | None = None) -> list[Verdict]:
        """One Verdict per row of (n, classes) logits and (n, features) pooled features."""
        logits = np.asarray(logits)
        raw = softmax(logits)
        probs = softmax(logits, self.temperature) if self.temperature else raw
        scores = self.ood_scores(logits, features)
        threshold = self.threshold if features is not None else None
        return [Verdict(probs[i], raw[i], float(scores[i]), None if threshold is None else bool(scores[i] > threshold))
                for i in range(len(logits))]

    def verdict(self, logits: np.ndarray, features: np.ndarray | None = None) -> Verdict:
        """One image's Verdict from its (classes,) logits and (features,) pooled features."""
        return self.verdicts(logits[None], None if features is None else features[None])[0]
