"""The shapes of the API's answers (and the predictor's typed results), as `/docs` shows them."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class ErrorAnswer(BaseModel):
    error: str = Field(description="what was wrong, in words")
    status: int
    detail: Any = None


class BoxAnswer(BaseModel):
    """A CAM box in the original image's pixels (after EXIF orientation)."""

    x0: float
    y0: float
    x1: float
    y1: float
    area_fraction: float = Field(description="the region's share of the heatmap's pixels")
    peak: float = Field(description="the region's highest heat, a fraction of the map's maximum")
    threshold: float = Field(description="the fraction of the map's maximum the region was cut at")


class LabelAnswer(BaseModel):
    label: str
    index: int
    score: float = Field(description="the calibrated probability (softmax of logits / the card's temperature), "
                         "given that the image is one of the model's classes: see open_world for whether it is")
    raw_score: float = Field(description="the uncalibrated softmax probability")
    boxes: list[BoxAnswer] | None = Field(None, description="absent with boxes=false")
    cam_url: str | None = Field(None, description="this label's CAM overlay; absent with cam=false")


class Timings(BaseModel):
    decode_ms: float
    queue_ms: float
    inference_ms: float
    cam_ms: float
    batch_size: int


class ImageError(BaseModel):
    status: int
    message: str


class OpenWorldAnswer(BaseModel):
    """Whether the image looks like the model's training data (app.scoring)."""

    unknown: bool | None = Field(description="true: not one of this model's classes, by its OOD score; null: this "
                                             "version has no fitted threshold (exported before open-world scoring)")
    ood_score: float = Field(description="higher means less like the training images")
    threshold: float | None = Field(description="unknown above it; it keeps 95% of the validation images known")
    method: str = Field(description="knn (distance to the nearest training images' features) or energy")
    calibrated: bool = Field(description="whether the scores are temperature-calibrated")
    temperature: float | None = None


class ImageAnswer(BaseModel):
    filename: str
    width: int | None = None
    height: int | None = None
    format: str | None = None
    predictions: list[LabelAnswer] = []
    open_world: OpenWorldAnswer | None = Field(None, description="is it one of this model's classes at all")
    timings: Timings | None = None
    image: int | None = Field(None, description="this image's index in the prediction's overlay URLs")
    error: ImageError | None = Field(None, description="why this image got no answer (the others still do)")


class ModelRef(BaseModel):
    name: str
    version: int
    architecture: str | None = None
    precision: str = Field("float32", description="the graph's arithmetic: float32, float16 or int8")
    test_time_flip: bool = Field(False, description="the graph averages each image with its left-right mirror "
                                                    "(twice the inference; chosen per model where it measured better)")
    test_time_zoom: bool = Field(False, description="the graph takes a second look around the object its CAM finds, "
                                                    "the crop's CAM put back in place and averaged with the image's "
                                                    "(twice the inference; chosen per model where it measured better)")


class BoxRuleAnswer(BaseModel):
    rule: str = Field(description="threshold:F, mass:F, otsu or spread:K, after pc1: when it cuts the foreground map")
    name: Literal["threshold", "mass", "otsu", "spread"]
    value: float | None = None
    map: Literal["cam", "pc1"] = Field("cam", description="cam: each label's own CAM; pc1: the foreground map "
                                       "(the last feature map's first principal component), one box for every label")
    source: str = Field(description="request, settings, or where the model card's rule comes from")


class PredictAnswer(BaseModel):
    id: str = Field(description="names the kept prediction in overlay URLs")
    model: ModelRef
    cam_threshold: float | None = Field(None, description="the box threshold, when the rule is a fixed one")
    box_rule: BoxRuleAnswer
    provider: str = Field(description="the ONNX Runtime provider that answered")
    results: list[ImageAnswer]
    total_ms: float
    model_load_ms: float | None = Field(None, description="how long this request waited for its model to load "
                                                          "(a model in standby: RESCAM_MAX_LOADED_MODELS)")


class ModelSummary(BaseModel):
    name: str
    version: int
    deployed: bool
    serving: bool
    architecture: str | None = None
    precision: str | None = Field(None, description="the graph's arithmetic: float32, float16 or int8")
    labels: list[str] | None = None
    metrics: dict[str, Any] | None = None
    created: str | None = None
    report: str | None = Field(None, description="the version's report (index.html), when it has one")
    broken: str | None = Field(None, description="why this version's card cannot be read")


class VersionFigures(BaseModel):
    version: int
    architecture: str | None
    labels: int
    box_rule: str
    created: str | None
    metrics: dict[str, Any]
    report: str | None = Field(None, description="the report's index.html, when the version has one")


class VersionAnswer(BaseModel):
    said: str
    score: float
    unknown: bool | None = Field(None, description="its open-world verdict on the image")
    box: list[float] | None
    iou: float | None = Field(None, description="of its box with the true box")
    overlay: str = Field(description="the drawn answer, a data: URL of a PNG")


class ComparedImage(BaseModel):
    truth: str | None
    true_box: list[float] | None
    group: str
    a: VersionAnswer
    b: VersionAnswer


class Comparison(BaseModel):
    a: VersionFigures
    b: VersionFigures
    images: list[ComparedImage]


class ModelDetail(ModelSummary):
    card: dict[str, Any] | None = None


ModelStateName = Literal["serving", "loading", "standby", "failed", "undeployed"]
STATE_HELP = ("serving; loading; standby (unloaded to keep within RESCAM_MAX_LOADED_MODELS: loads on its next "
              "request); failed (its deployed version does not load; `error` says why); undeployed (no version live)")


class ModelList(BaseModel):
    name: str
    state: ModelStateName = Field(description=STATE_HELP)
    deployed: int | None
    versions: list[ModelSummary]


class ModelEntry(BaseModel):
    name: str
    default: bool = Field(description="answers requests that name no model")
    state: ModelStateName = Field(description=STATE_HELP)
    deployed: int | None = Field(description="the version the registry's pointer names")
    serving: int | None = Field(description="the version this process answers with")
    versions: int
    architecture: str | None = None
    precision: str | None = None
    labels: list[str] | None = None
    memory_bytes: int | None = Field(None, description="resident memory its loaded engine added (approximate)")
    error: str | None = Field(None, description="why it does not serve")
    routes: dict[str, str]


class ModelIndex(BaseModel):
    default: str
    max_loaded: int | None = Field(description="RESCAM_MAX_LOADED_MODELS; None: no bound")
    models: list[ModelEntry]


class DeployAnswer(BaseModel):
    name: str
    deployed: int
    provider: str | None = None
    rolled_back_from: int | None = None


class DeleteAnswer(BaseModel):
    name: str
    deleted: int
    by: str


JobState = Literal["queued", "running", "cancelling", "finishing", "succeeded", "failed", "cancelled", "interrupted"]


class JobRequest(BaseModel):
    # a misspelt field ("option", "settings") is a 422 that names it, not a job trained without it
    model_config = ConfigDict(extra="forbid")

    dataset: str = Field(description="a data set under the server's data root, or 'synthetic'")
    model: str | None = Field(None, pattern=r"^[A-Za-z0-9_-]{1,64}$",
                              description="the model it trains a candidate for (letters, digits, '-' and '_', at "
                                          "most 64); default: the model whose labels are the data set's classes, "
                                          "else a new model named after the data set (the shapes: the default model)")
    architecture: str | None = Field(None, description="e.g. resnet20, resnet50; the recipe's by default")
    recipe: Literal["auto", "demo", "paper-cifar", "paper-imagenet"] | None = Field(
        None, description="default: auto for a data set (steps, image size and augmentation chosen from the data, "
                          "the best epoch kept), demo for 'synthetic'")
    epochs: int | None = Field(None, ge=1, le=10_000)
    batch_size: int | None = Field(None, ge=1, le=65_536)
    lr: float | None = Field(None, gt=0, le=10)
    image_size: int | None = Field(None, ge=8, le=1024)
    seed: int | None = Field(None, ge=0, le=2**32 - 1)
    time_budget_s: float | None = Field(None, gt=0, le=7 * 24 * 3600,
                                        description="bound on the training time; auto's default is 480 s, stretched "
                                                    "up to 960 s (options.time_budget_max_s) where 480 would show "
                                                    "each image fewer than 160 times; a budget given here is not "
                                                    "stretched")
    init: str = Field("auto", max_length=200,
                      description="auto (the recipe's start: scratch today) | scratch | shapes (the shipped shapes "
                                  "model's weights, all but the head, where the planned network is the same, else "
                                  "scratch) | live (the live version's weights) | file:NAME (a torchvision-format "
                                  "state_dict, .pth or .safetensors, in the data root's weights/ folder) | "
                                  "torchvision:NAME (torchvision's ImageNet weights, e.g. torchvision:resnet50: "
                                  "from the torch hub cache, or downloaded with their SHA-256 checked)")
    precision: Literal["float32", "int8"] = Field(
        "float32", description="the served model's arithmetic: int8 is ONNX Runtime's static quantization, about 2-3x "
                               "faster on CPUs with VNNI; kept only where it keeps >= 99% of float32's top-1, CAM "
                               "correlation >= 0.99 and median box IoU >= 0.9 on validation images (where int8 flips only "
                               "near-ties, float32 answers them: int8_near_ties in the result is their share), "
                               "else float32 serves and the result says why (training precision is "
                               "options.precision)")
    deploy: bool = Field(True, description="deploy when done, if it passes the promotion gate")
    force: bool = Field(False, description="deploy even if it fails the gate (recorded in the audit log)")
    options: dict[str, Any] | None = Field(None, max_length=40,
                                           description="other training settings (app.jobspec.JOB_SETTINGS), "
                                                       "e.g. synthetic_train")


class JobAnswer(BaseModel):
    id: str
    state: JobState
    created: float
    started: float | None = None
    finished: float | None = None
    request: dict[str, Any]
    resume: bool = False
    progress: dict[str, Any] | None = Field(None, description="the trainer's latest step, epoch and plan")
    result: dict[str, Any] | None = Field(None, description="the registered version, the gate's decision, "
                                                            "whether it went live and why not")
    error: str | None = None


class Curves(BaseModel):
    step: list[int]
    loss: list[float]
    train_top1: list[float | None]
    val_step: list[int]
    val_loss: list[float | None]
    val_top1: list[float | None]


class JobList(BaseModel):
    jobs: list[JobAnswer]


class SplitCounts(BaseModel):
    images: int
    boxed_images: int
    classes: dict[str, dict[str, int]]


class DatasetAnswer(BaseModel):
    name: str
    classes: dict[str, int]
    images: int
    boxed_images: int
    splits: dict[str, SplitCounts]


class DatasetList(BaseModel):
    datasets: list[DatasetAnswer]


class SampleAnswer(BaseModel):
    dataset: str
    label: str
    file: str
    split: str
    box: list[float] | None = None


class Health(BaseModel):
    status: Literal["alive"]
    pid: int
    model: dict[str, Any] | None
    provider: str | None
    load_error: str | None
    models: dict[str, dict[str, Any]] = Field({}, description="every loaded model's engine, by name")


class Readiness(BaseModel):
    ready: bool
    reason: str | None = None
    model: str | None = Field(None, description="the default model")
    version: int | None = None
    provider: str | None = None
    models: dict[str, dict[str, Any]] = Field({}, description="each model that must serve: state, version, reason")


class TrialRequest(BaseModel):
    version: int = Field(ge=1, description="the candidate: a registered version that is not live")
    share: float = Field(0.1, gt=0, le=1, description="the share of the model's live requests it also answers")
    samples: int = Field(500, ge=1, le=100_000, description="images to compare; the trial is complete then")
    reason: str = Field("", max_length=2000, description="recorded with the trial and, on promotion, the audit log")


class TrialFigures(BaseModel):
    images: int  # images both versions answered
    failed: int  # images the candidate failed on
    top1_agreement: float | None
    box_iou_median: float | None  # the two boxes of the label the live answer gave
    box_iou_at_least_half: float | None
    boxes_compared: int
    live_ms_p50: float | None  # inference per image
    candidate_ms_p50: float | None
    candidate_ms_p95: float | None
    live_unknown_rate: float | None  # answers "not one of this model's classes"
    candidate_unknown_rate: float | None
    last_error: str | None


class TrialAnswer(BaseModel):
    id: str
    model: str
    version: int
    live_version: int | None  # live when the trial started
    share: float
    target: int
    state: str  # running | complete | stopped | promoted | failed
    started: float
    ended: float | None
    started_by: str | None
    reason: str | None
    note: str | None
    skipped: int  # drawn requests not tried because the candidate was busy
    figures: TrialFigures


class TrialList(BaseModel):
    model: str
    trials: list[TrialAnswer]  # newest first
