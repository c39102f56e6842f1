"""The OIP v2 codec: JSON and binary tensors in, JSON and binary tensors out, bad bodies named."""

import json

import numpy as np
import pytest

from app import oip


def binary_body(x: np.ndarray, extra: bytes = b"", size: int | None = None) -> tuple[bytes, str]:
    head = json.dumps({"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                                   "parameters": {"binary_data_size": size if size is not None else x.nbytes}}],
                       "parameters": {"binary_data_output": True}}).encode()
    return head + x.astype("<f4").tobytes() + extra, str(len(head))


def test_binary_in_binary_out_round_trips():
    x = np.arange(24, dtype=np.float32).reshape(1, 2, 3, 4)
    request, arrays = oip.parse(*binary_body(x))
    np.testing.assert_array_equal(arrays["input"], x)
    body, n = oip.encode({"model_name": "m"}, {"logits": x[0, 0]}, request)
    head = json.loads(body[:n])
    assert head["outputs"][0]["parameters"] == {"binary_data_size": 12 * 4}
    np.testing.assert_array_equal(np.frombuffer(body[n:], "<f4").reshape(3, 4), x[0, 0])


def test_json_in_json_out():
    body = json.dumps({"inputs": [{"name": "input", "shape": [2], "datatype": "UINT8", "data": [1, 2]}]}).encode()
    request, arrays = oip.parse(body, None)
    assert arrays["input"].dtype == np.uint8 and arrays["input"].tolist() == [1, 2]
    out, n = oip.encode({}, {"logits": np.ones(2, np.float32)}, request)
    assert n is None and json.loads(out)["outputs"][0]["data"] == [1.0, 1.0]


@pytest.mark.parametrize("body_and_length, words", [
    (binary_body(np.zeros(4, np.float32), extra=b"junk"), "no input claims"),
    (binary_body(np.zeros(4, np.float32), size=12), "do not hold"),
    (binary_body(np.zeros(4, np.float32), size=64), "past the body's end"),
    ((b'{"inputs": []}', "999"), "does not fit a body"),
    ((b'{"inputs": []}', "x"), "must be a number"),
    ((b"not json", None), "not JSON"),
    ((b'{"inputs": []}', None), "does not follow the protocol"),
    ((b'{"inputs": [{"name": "input", "shape": [1], "datatype": "BF16", "data": [1]}]}', None), "unsupported"),
    ((b'{"inputs": [{"name": "input", "shape": [1], "datatype": "FP32"}]}', None), "neither data"),
])
def test_bad_bodies_are_named(body_and_length, words):
    with pytest.raises(oip.ProtocolError, match=words):
        oip.parse(*body_and_length)
