"""The FastAPI application: `create_app(settings)`; nothing is loaded at import time."""

from __future__ import annotations

import logging
import time
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from .datasets import DatasetError
from .imaging import ImageError
from .pipeline import Service
from .routes import admin, datasets, health, jobs, models, predict, v2
from .settings import Settings

log = logging.getLogger("rescam")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service = Service(settings)
        app.state.service = service
        await service.start()
        engine = service.engine
        log.info("rescam serving %s", engine.describe() if engine else f"nothing yet: {service.load_error}")
        try:
            yield
        finally:
            await service.stop()

    app = FastAPI(title="rescam", version="0.1.0", lifespan=lifespan,
                  description="ResNet classification with class-activation maps and CAM boxes.")
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["*"],
                           allow_headers=["*"])

    @app.middleware("http")
    async def count_requests(request: Request, call_next):
        start = time.perf_counter()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            route = request.scope.get("route")
            path = getattr(route, "path", "unmatched")
            service = getattr(request.app.state, "service", None)
            if service is not None:
                labels = (request.method, path, str(status))
                service.metrics.requests.labels(*labels).inc()
                service.metrics.latency.labels(*labels).observe(time.perf_counter() - start)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": exc.detail, "status": exc.status_code}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(DatasetError)
    @app.exception_handler(ImageError)
    async def input_error(request: Request, exc: DatasetError | ImageError) -> JSONResponse:
        return JSONResponse({"error": exc.message, "status": exc.status}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        return JSONResponse({"error": "; ".join(problems), "status": 422,
                             "detail": [{k: v for k, v in e.items() if k in ("loc", "msg", "type")}
                                        for e in exc.errors()]}, status_code=422)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return JSONResponse({"error": f"internal error: {type(exc).__name__}", "status": 500}, status_code=500)

    static = Path(__file__).parent / "static"
    app.mount("/static", StaticFiles(directory=static), name="static")

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(static / "index.html")

    for router in (health.router, predict.router, models.router, admin.router, datasets.router, jobs.router,
                   v2.router):
        app.include_router(router)
    return app


__all__ = ["create_app", "HTTPException"]
