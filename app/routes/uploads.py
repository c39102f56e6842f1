"""Reading uploaded files from a request: multipart parts or a raw body, within a size limit,
and how such a body is declared in the OpenAPI (so that `/docs` can upload one)."""

from __future__ import annotations

import json

from fastapi import HTTPException, Request
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException

RAW_TYPES = ("image/", "application/octet-stream")
MULTIPART_OVERHEAD = 64 * 1024  # part headers and boundaries beside the files themselves
JSON_BODY_LIMIT = 1024 * 1024  # any other body: a job request, a deploy's reason


def upload_body(*raw_types: str, description: str) -> dict:
    """`openapi_extra` for a body that is multipart (a part named `file`) or one raw file."""
    binary = {"type": "string", "format": "binary"}
    return {"requestBody": {"required": True, "content": {
        "multipart/form-data": {"schema": {"type": "object", "required": ["file"],
                                           "properties": {"file": {**binary, "description": description}}}},
        **{t: {"schema": binary} for t in raw_types}}}}


async def read_limited(stream, limit: int) -> bytes:
    chunks, size = [], 0
    async for chunk in stream:
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, f"upload is larger than the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


class BodyLimit:
    """ASGI middleware: every request body is counted as it arrives and cut off with a 413 past its
    route's limit, with or without a Content-Length (a chunked body is refused while it arrives,
    not after it was read, parsed and spooled to disk)."""

    def __init__(self, app, settings) -> None:
        self.app, self.settings = app, settings

    def limit(self, method: str, path: str) -> int:
        s = self.settings
        if method == "POST" and path == "/v1/datasets":
            return s.max_dataset_bytes + MULTIPART_OVERHEAD
        if method == "POST" and path.endswith("/samples"):  # one image
            return s.max_upload_bytes + MULTIPART_OVERHEAD
        if method == "POST" and (path == "/v1/predict" or path.endswith("/infer")):
            return s.max_upload_bytes * max(1, s.max_files) + MULTIPART_OVERHEAD
        return JSON_BODY_LIMIT  # admin requests: a job, a deploy's reason

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.limit(scope["method"], scope["path"])
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            body = json.dumps({"error": f"the request body is larger than the limit of {limit} bytes",
                               "status": 413}).encode()
            await send({"type": "http.response.start", "status": 413,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(body)).encode())]})
            return await send({"type": "http.response.body", "body": body})
        received = 0

        async def counted():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit:
                raise HTTPException(413, f"the request body is larger than the limit of {limit} bytes")
            return message

        await self.app(scope, counted, send)


async def read_uploads(request: Request, max_bytes: int, max_files: int, allowed: tuple[str, ...] = RAW_TYPES
                       ) -> list[tuple[str, bytes]]:
    """The files of a request, each at most `max_bytes`: multipart parts named `file` (or
    `files`), or the raw body."""
    content_type = request.headers.get("content-type", "").lower()
    # the body as a whole is bounded as it arrives (BodyLimit); each file is checked here
    if content_type.startswith("multipart/form-data"):
        try:
            form = await request.form(max_files=max_files, max_fields=50, max_part_size=1024 * 1024)
        except MultiPartException as e:
            raise HTTPException(400, f"malformed multipart body: {e.message}") from None
        files = [v for k, v in form.multi_items() if k in ("file", "files") and isinstance(v, UploadFile)]
        if not files:
            raise HTTPException(422, "multipart body has no part named 'file' holding an image")
        out = []
        for f in files:
            if f.size is not None and f.size > max_bytes:
                raise HTTPException(413, f"{f.filename!r} is larger than the limit of {max_bytes} bytes")
            part_type = (f.content_type or "").lower()
            if part_type and not part_type.startswith(allowed):
                raise HTTPException(415, f"{f.filename!r} has content type {part_type!r}; send an image")
            out.append((f.filename or "upload", await f.read()))
        return out
    if content_type and not content_type.startswith(RAW_TYPES):
        raise HTTPException(415, f"content type {content_type!r} is not an image; send image/* or multipart/form-data")
    body = await read_limited(request.stream(), max_bytes)
    if not body:
        raise HTTPException(400, "the request body is empty; send an image")
    return [("body", body)]
