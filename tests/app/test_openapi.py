"""The OpenAPI the service publishes: every route answers in a declared shape, the image bodies
are declared so /docs can upload one, and /docs and /redoc load nothing from another host."""

import re

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from tests.conftest import shape_jpeg


@pytest.fixture(scope="module")
def client(tiny_model):
    with TestClient(create_app(Settings(registry=tiny_model.registry, run_jobs=False))) as c:
        yield c


def operations(spec):
    for path, methods in spec["paths"].items():
        for method, op in methods.items():
            yield path, method, op


def test_every_route_declares_what_it_answers(client):
    spec = client.get("/openapi.json").json()
    ops = list(operations(spec))
    assert len(ops) >= 25
    for path, method, op in ops:
        ok = next((op["responses"][s] for s in ("200", "201", "202") if s in op["responses"]), None)
        assert ok is not None, (method, path)
        content = ok.get("content", {})
        json_schema = content.get("application/json", {}).get("schema")
        if json_schema is not None:  # a named model, not the bare "any JSON" FastAPI writes for a dict
            assert "$ref" in json_schema, (method, path, json_schema)
        else:  # images, heatmaps, logs and metrics: the media types are named
            assert content and all("/" in media for media in content), (method, path, content)
        for status, answer in op["responses"].items():
            if status.startswith("4") and status != "422":
                assert answer["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorAnswer"}


def test_image_bodies_are_declared_for_upload(client):
    spec = client.get("/openapi.json").json()
    for path in ("/v1/predict", "/v1/datasets/{name}/samples", "/v1/datasets"):
        body = spec["paths"][path]["post"]["requestBody"]["content"]
        assert body["multipart/form-data"]["schema"]["properties"]["file"]["format"] == "binary"
    raw = spec["paths"]["/v1/predict"]["post"]["requestBody"]["content"]
    assert {"image/*", "application/octet-stream"} <= set(raw)


def test_a_multipart_upload_as_docs_sends_it_is_answered(client):
    r = client.post("/v1/predict?top_k=2", files={"file": ("shape.jpg", shape_jpeg(), "image/jpeg")})
    assert r.status_code == 200 and len(r.json()["results"][0]["predictions"]) == 2


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_load_only_local_files(client, page):
    html = client.get(page).text
    urls = re.findall(r"""(?:src|href|url)\s*[=:(]\s*['"]([^'"]+)['"]""", html)
    assert urls, html
    for url in urls:
        assert not re.match(r"(https?:)?//", url), url  # no CDN, no web font
        assert client.get(url).status_code == 200, url
