"""POST images for predictions; fetch their CAM overlays and raw heatmaps."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response

from ..cam import BoxRule
from ..predictor import Options
from ..schemas import ErrorAnswer, PredictAnswer
from .deps import PredictorDep, SettingsDep, require_predict_token
from .uploads import read_uploads, upload_body

router = APIRouter(tags=["predict"], dependencies=[Depends(require_predict_token)])
ERRORS = {status: {"model": ErrorAnswer} for status in (400, 401, 403, 404, 413, 415, 422, 503, 504)}
IMAGE_BODY = upload_body("image/*", "application/octet-stream",
                         description="an image (JPEG, PNG, WebP, GIF, BMP, TIFF); repeat the part for several")


def request_rule(threshold: float | None, box_rule: str | None) -> BoxRule | None:
    if threshold is not None and box_rule is not None:
        raise HTTPException(422, "give threshold or box_rule, not both")
    if threshold is not None:
        return BoxRule("threshold", threshold)
    if box_rule is None:
        return None
    try:
        return BoxRule.parse(box_rule)
    except ValueError as e:
        raise HTTPException(422, str(e)) from None


def predict_options(
    top_k: Annotated[int, Query(ge=1, le=1000, description="labels to return")] = 5,
    cam: Annotated[bool, Query(description="keep CAMs for overlay URLs")] = True,
    boxes: Annotated[bool, Query(description="CAM boxes per label")] = True,
    threshold: Annotated[float | None, Query(gt=0, lt=1,
                                             description="box threshold, a fraction of the CAM's max")] = None,
    box_rule: Annotated[str | None, Query(max_length=32, description="threshold:F, mass:F (the smallest region "
                                          "holding F of the CAM's heat), otsu or spread:K (K standard deviations "
                                          "of the heat around its centroid); default: the model's rule")] = None,
    all_boxes: Annotated[bool, Query(description="every component, not only the largest")] = False,
    min_area: Annotated[float, Query(ge=0, le=1, description="smallest component kept, a fraction of the image")] = 0.0,
) -> Options:
    return Options(top_k=top_k, cams=cam, boxes=boxes, rule=request_rule(threshold, box_rule), all_boxes=all_boxes,
                   min_area=min_area)


OptionsDep = Annotated[Options, Depends(predict_options)]
MODEL_NAME = Query(max_length=64, description="the model that answers (GET /v1/models); default: the service's "
                                              "default model")


@router.post("/v1/predict", response_model=PredictAnswer, responses=ERRORS, openapi_extra=IMAGE_BODY)
async def predict(request: Request, predictor: PredictorDep, settings: SettingsDep, opts: OptionsDep,
                  model: Annotated[str | None, MODEL_NAME] = None):
    """Multipart `file` (one or several) or a raw image body. Answers labels, scores, CAM boxes
    and overlay URLs for each image; top_k beyond the label count returns every label."""
    return await answer_uploads(request, predictor, settings, opts, model)


@router.post("/v1/models/{name}/predict", response_model=PredictAnswer, responses=ERRORS, openapi_extra=IMAGE_BODY)
async def predict_with(name: str, request: Request, predictor: PredictorDep, settings: SettingsDep, opts: OptionsDep):
    """POST /v1/predict, answered by model `name`."""
    return await answer_uploads(request, predictor, settings, opts, name)


async def answer_uploads(request: Request, predictor, settings, opts: Options, model: str | None):
    predictor.models.manager(model)  # an unknown model is a 404 before the upload is read
    uploads = await read_uploads(request, settings.max_upload_bytes, settings.max_files)
    answer = await predictor.predict(uploads, opts, model)
    errors = [r.error for r in answer.results if r.error is not None]
    if errors and len(errors) == len(answer.results):  # nothing answered: the first image's error
        return JSONResponse({"error": errors[0].message, "status": errors[0].status,
                             "detail": [r.model_dump(exclude_none=True) for r in answer.results]},
                            status_code=errors[0].status)
    overlay = request.app.url_path_for("cam_overlay", pid=answer.id)
    for result in answer.results:
        for p in result.predictions if result.image is not None else ():
            p.cam_url = f"{overlay}?image={result.image}&label={p.index}"
    return answer


@router.get("/v1/predictions/{pid}/cam", response_class=Response, responses={
    200: {"content": {"image/png": {}, "image/jpeg": {}, "image/webp": {}, "application/octet-stream": {}},
          "description": "the overlay, the grey heatmap PNG, or the float32 heatmap as .npy"},
    **{status: {"model": ErrorAnswer} for status in (401, 403, 404, 422)}})
def cam_overlay(
    pid: str,
    predictor: PredictorDep,
    label: Annotated[str, Query(max_length=200, description="a label name or index")],
    image: Annotated[int, Query(ge=0, le=1000)] = 0,
    format: Annotated[Literal["png", "jpeg", "webp", "heatmap.png", "npy"], Query()] = "png",
    alpha: Annotated[float, Query(ge=0, le=1)] = 0.5,
    colormap: Annotated[Literal["turbo", "jet"], Query()] = "turbo",
    threshold: Annotated[float | None, Query(gt=0, lt=1)] = None,
    max_side: Annotated[int | None, Query(ge=16, le=8192)] = None,
    min_side: Annotated[int, Query(ge=0, le=2048, description="draw a smaller picture's overlay enlarged to "
                                   "this long side (at most max_side), so that its label reads")] = 0,
) -> Response:
    """The CAM of any label over the image (png/jpeg/webp), the raw heatmap as a grey PNG, or
    the float32 heatmap as .npy; the heatmap is at the working resolution of the image."""
    data, media_type = predictor.cam_picture(pid, image, label, format, alpha, colormap, threshold, max_side,
                                             min_side)
    return Response(data, media_type=media_type)
