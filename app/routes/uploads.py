"""Reading uploaded files from a request: multipart parts or a raw body, within a size limit,
and how such a body is declared in the OpenAPI (so that `/docs` can upload one)."""

from __future__ import annotations

from fastapi import HTTPException, Request
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException

RAW_TYPES = ("image/", "application/octet-stream")
MULTIPART_OVERHEAD = 64 * 1024  # part headers and boundaries beside the files themselves


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


def capped(request: Request, limit: int) -> Request:
    """The same request, its body cut off with a 413 once it passes `limit` bytes: a chunked body
    (no Content-Length) is refused while it arrives, not after it was parsed and spooled to disk."""
    received = 0

    async def receive():
        nonlocal received
        message = await request.receive()
        received += len(message.get("body", b""))
        if received > limit:
            raise HTTPException(413, f"the request body is larger than the limit of {limit} bytes")
        return message

    return Request(request.scope, receive)


async def read_uploads(request: Request, max_bytes: int, max_files: int, allowed: tuple[str, ...] = RAW_TYPES
                       ) -> list[tuple[str, bytes]]:
    """The files of a request: multipart parts named `file` (or `files`), or the raw body."""
    content_type = request.headers.get("content-type", "").lower()
    declared = request.headers.get("content-length")
    limit = max_bytes * max(1, max_files) + MULTIPART_OVERHEAD
    if declared and declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"upload is larger than the limit of {max_bytes} bytes per file")
    if content_type.startswith("multipart/form-data"):
        try:
            form = await capped(request, limit).form(max_files=max_files, max_fields=50, max_part_size=1024 * 1024)
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
