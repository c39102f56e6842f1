"""The FastAPI application: `create_app(settings)` wires the service's parts; nothing is loaded at
import time.

    LiveModels    (app/live_models.py)    the models that serve, each a ModelManager (app/model_manager.py):
                                          load, swap, follow, deploy, roll back; a bound on loaded models
    Predictor     (app/predictor.py)      decode -> prepare -> infer -> postprocess; kept overlays
    Retraining    (app/retraining.py)     data sets, the job queue and its runner
    ShadowTrials  (app/shadow.py)         a candidate version answering a share of live requests beside the live one
    routes/       one thin router per resource; errors become answers through ERROR_STATUS below
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException as StarletteHTTPException

from .cam import NoForeground
from .card import CardError
from .datasets import DatasetError
from .engine import ModelLoadError
from .imaging import ImageError
from .live_models import LiveModels
from .metrics import CountRequests, Metrics
from .model_manager import NotDeployed
from .predictor import NotFound, Overloaded, Predictor
from .registry import InvalidModelName, RegistryError, UnknownVersion
from .retraining import JobRefused, Retraining
from .routes import admin, datasets, health, jobs, models, predict, reports, v2
from .routes import trials as trial_routes
from .routes.uploads import BodyLimit
from .settings import Settings
from .shadow import ShadowTrials, TrialRefused

log = logging.getLogger("rescam")

# The one table from the service's exceptions to HTTP statuses (the most specific class wins);
# ImageError, DatasetError and JobRefused carry their own 4xx.
ERROR_STATUS: dict[type[Exception], int] = {
    ModelLoadError: 503,  # no model can serve
    Overloaded: 504,  # no answer within the request timeout
    NotFound: 404,  # a kept prediction, image or label
    UnknownVersion: 404,  # and UnknownModel, which names the models there are
    InvalidModelName: 422,
    NoForeground: 422,  # a pc1 box rule asked of a version without the foreground map
    NotDeployed: 409,  # a deploy or rollback that changed nothing; the live version keeps serving
    TrialRefused: 409,  # a shadow trial that cannot start, stop or promote as asked
    RegistryError: 409,
    CardError: 409,
}


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        metrics = Metrics()
        models_ = LiveModels(settings, metrics)
        predictor = Predictor(settings, models_, metrics)
        retraining = Retraining(settings, models_)
        predictor.shadow = trials = ShadowTrials(settings, models_, predictor.rule_for, metrics)
        app.state.settings, app.state.metrics = settings, metrics
        app.state.models, app.state.predictor, app.state.retraining = models_, predictor, retraining
        app.state.trials = trials
        await predictor.start()
        await models_.start()
        await retraining.start()
        for m in models_.serving():
            log.info("model %s: %s", m.name, m.engine.describe() if m.engine else f"{m.state}: {m.load_error or ''}")
        try:
            yield
        finally:
            await retraining.stop()
            await trials.stop()
            await models_.stop()
            await predictor.stop()
            metrics.process_ended()

    # Swagger UI and ReDoc from the assets fastapi-offline ships: /docs works with no network
    app = FastAPIOffline(title="rescam", version="0.1.0", lifespan=lifespan,
                         description="ResNet classification with class-activation maps and CAM boxes.")
    app.add_middleware(BodyLimit, settings=settings)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["*"],
                           allow_headers=["*"])
    app.add_middleware(CountRequests)  # outermost: every request is counted, refused ones too

    def answer(status: int, message: str, headers: dict | None = None) -> JSONResponse:
        return JSONResponse({"error": message, "status": status}, status_code=status, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return answer(exc.status_code, exc.detail, getattr(exc, "headers", None))

    @app.exception_handler(DatasetError)
    @app.exception_handler(ImageError)
    @app.exception_handler(JobRefused)
    async def input_error(request: Request, exc: DatasetError | ImageError | JobRefused) -> JSONResponse:
        return answer(exc.status, exc.message)

    async def table_error(request: Request, exc: Exception) -> JSONResponse:
        status = next(ERROR_STATUS[cls] for cls in type(exc).__mro__ if cls in ERROR_STATUS)
        return answer(status, str(exc))

    for error in ERROR_STATUS:
        app.add_exception_handler(error, table_error)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        return JSONResponse({"error": "; ".join(problems), "status": 422,
                             "detail": [{k: v for k, v in e.items() if k in ("loc", "msg", "type")}
                                        for e in exc.errors()]}, status_code=422)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return answer(500, f"internal error: {type(exc).__name__}")

    static = Path(__file__).parent / "static"
    app.mount("/static", StaticFiles(directory=static), name="static")

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(static / "index.html")

    for router in (health.router, predict.router, models.router, reports.router, admin.router, datasets.router,
                   jobs.router, trial_routes.router, v2.router):
        app.include_router(router)
    return app
