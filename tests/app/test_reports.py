"""Reports and the side-by-side comparison over HTTP (admin token required)."""

import base64
import io

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.main import create_app
from app.settings import Settings

TOKEN = "report-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def client(two_versions, tmp_path_factory):
    settings = Settings(registry=two_versions / "registry", data_root=tmp_path_factory.mktemp("data"),
                        admin_token=TOKEN, run_jobs=False)
    with TestClient(create_app(settings)) as c:
        yield c


def test_versions_link_their_reports_and_the_files_need_the_admin_token(client):
    versions = client.get("/v1/models/default/versions").json()["versions"]
    assert [v["report"] for v in versions] == ["/v1/models/default/versions/1/report/index.html", "/v1/models/default/versions/2/report/index.html"]
    assert client.get("/v1/models/default/versions/1/report/index.html").status_code == 401
    page = client.get("/v1/models/default/versions/1/report/index.html", headers=AUTH)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    png = client.get("/v1/models/default/versions/2/report/confusion.png", headers=AUTH)
    assert png.headers["content-type"] == "image/png" and png.content[:4] == b"\x89PNG"
    for bad in ("../card.json", "..%2Fcard.json", "nothing.png", "../../1/model.onnx"):
        r = client.get(f"/v1/models/default/versions/1/report/{bad}", headers=AUTH)
        assert r.status_code == 404 and "error" in r.json(), bad
    assert client.get("/v1/models/default/versions/9/report/index.html", headers=AUTH).status_code == 404


def test_two_versions_side_by_side_on_the_same_images(client, tiny_model):
    assert client.get("/v1/models/default/compare/1/2").status_code == 401
    c = client.get("/v1/models/default/compare/1/2", headers=AUTH).json()
    assert (c["a"]["version"], c["b"]["version"]) == (1, 2)
    assert c["a"]["metrics"]["top1"] == tiny_model.card["metrics"]["top1"]
    assert len(c["images"]) >= 4
    for row in c["images"]:
        assert row["a"]["said"] == row["b"]["said"]  # the same model twice: the same answers
        assert row["a"]["box"] == row["b"]["box"] and row["a"]["score"] == row["b"]["score"]
        picture = Image.open(io.BytesIO(base64.b64decode(row["a"]["overlay"].split(",", 1)[1])))
        assert min(picture.size) >= 224
    assert client.get("/v1/models/default/compare/1/7", headers=AUTH).status_code == 404
