"""The Open Inference Protocol v2 request and response, JSON and binary (the binary tensor data
extension, which Triton's clients use by default): a JSON header of `Inference-Header-Content-Length`
bytes, then each binary tensor's raw little-endian bytes in the order the header names them."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from pydantic import BaseModel, Field, ValidationError

HEADER_LENGTH = "inference-header-content-length"
DATATYPES = {"FP32": np.float32, "FP64": np.float64, "FP16": np.float16, "UINT8": np.uint8, "INT8": np.int8,
             "INT32": np.int32, "INT64": np.int64}


class ProtocolError(Exception):
    """A request that does not follow the protocol (a 400); the message says where."""


class InferInput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[Any] | None = None
    parameters: dict[str, Any] | None = None


class RequestedOutput(BaseModel):
    name: str
    parameters: dict[str, Any] | None = None


class InferRequest(BaseModel):
    id: str | None = None
    inputs: list[InferInput] = Field(min_length=1)
    outputs: list[RequestedOutput] | None = None
    parameters: dict[str, Any] | None = None


def parse(body: bytes, header_length: str | None) -> tuple[InferRequest, dict[str, np.ndarray]]:
    """The request and its inputs as arrays (each its declared datatype and shape)."""
    try:
        n = int(header_length) if header_length is not None else len(body)
    except ValueError:
        raise ProtocolError(f"{HEADER_LENGTH} must be a number, not {header_length!r}") from None
    if not 0 < n <= len(body):
        raise ProtocolError(f"{HEADER_LENGTH} {n} does not fit a body of {len(body)} bytes")
    try:
        request = InferRequest.model_validate(json.loads(body[:n]))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ProtocolError(f"the request header is not JSON: {e}") from None
    except ValidationError as e:
        raise ProtocolError(f"the request header does not follow the protocol: {e.errors()[0]['msg']} at "
                            f"{'.'.join(map(str, e.errors()[0]['loc']))}") from None
    binary, offset, arrays = memoryview(body)[n:], 0, {}
    for item in request.inputs:
        dtype = DATATYPES.get(item.datatype)
        if dtype is None:
            raise ProtocolError(f"input {item.name!r}: unsupported datatype {item.datatype}; use one of "
                                f"{', '.join(DATATYPES)}")
        if any(d < 0 for d in item.shape) or int(np.prod(item.shape, dtype=np.int64)) > 1 << 28:
            raise ProtocolError(f"input {item.name!r}: shape {item.shape} is not a tensor this server takes")
        size = (item.parameters or {}).get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(binary):
                raise ProtocolError(f"input {item.name!r}: binary_data_size {size} runs past the body's end")
            if size != int(np.prod(item.shape)) * np.dtype(dtype).itemsize:
                raise ProtocolError(f"input {item.name!r}: {size} bytes do not hold {item.datatype} {item.shape}")
            arrays[item.name] = np.frombuffer(binary[offset:offset + size], dtype=np.dtype(dtype).newbyteorder("<")
                                              ).reshape(item.shape)
            offset += size
        elif item.data is not None:
            try:
                with np.errstate(over="ignore", invalid="ignore"):
                    arrays[item.name] = np.asarray(item.data, dtype=dtype).reshape(item.shape)
            except (ValueError, TypeError, OverflowError) as e:
                raise ProtocolError(f"input {item.name!r}: data does not fit {item.datatype} {item.shape}: {e}") \
                    from None
        else:
            raise ProtocolError(f"input {item.name!r} has neither data nor binary_data_size")
    if offset != len(binary):
        raise ProtocolError(f"the body has {len(binary) - offset} bytes that no input claims")
    return request, arrays


def wants_binary(request: InferRequest, name: str) -> bool:
    """An output goes as binary when its parameters ask, or the request asks for all outputs so."""
    for o in request.outputs or []:
        if o.name == name and (o.parameters or {}).get("binary_data") is not None:
            return bool(o.parameters["binary_data"])
    return bool((request.parameters or {}).get("binary_data_output", False))


def encode(head: dict[str, Any], outputs: dict[str, np.ndarray], request: InferRequest) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when binary tensors follow it (else None).
    Boolean outputs go as BOOL (one byte each in binary), every other as FP32."""
    blobs, described = [], []
    for name, value in outputs.items():
        boolean = value.dtype == np.bool_
        entry = {"name": name, "datatype": "BOOL" if boolean else "FP32", "shape": list(value.shape)}
        if wants_binary(request, name):
            data = np.ascontiguousarray(value, dtype=np.bool_ if boolean else "<f4").tobytes()
            entry["parameters"] = {"binary_data_size": len(data)}
            blobs.append(data)
        else:
            entry["data"] = value.ravel().tolist()
        described.append(entry)
    header = json.dumps({**head, "outputs": described}).encode()
    return header + b"".join(blobs), len(header) if blobs else None


def request_schema() -> dict[str, Any]:
    """InferRequest's JSON schema with its definitions inlined (OpenAPI cannot resolve `#/$defs`
    inside a request body declared by hand)."""
    schema = InferRequest.model_json_schema()
    defs = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return inline(defs[node["$ref"].rsplit("/", 1)[-1]])
            return {k: inline(v) for k, v in node.items()}
        if isinstance(node, list):
            return [inline(v) for v in node]
        return node

    return inline(schema)
