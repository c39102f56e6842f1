"""deploy/kubernetes, validated offline: Kubernetes' own schemas (kubernetes-validate, strict: an
unknown or misspelt field fails), KServe's resources against the KServe SDK's models, and what the
manifests name checked against the app and the CLI: probe routes answer, ports match the serve
command, every RESCAM_ variable is a setting, every rescam command parses."""

import importlib
import importlib.util
import re
import shlex
import sys
import types
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from training.cli import build_parser

ROOT = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
KSERVE_KINDS = {"InferenceService": "V1beta1InferenceService", "ServingRuntime": "V1alpha1ServingRuntime"}
ON_DEMAND = {"trainer-job.yaml"}  # `kubectl create -f`: a Job per training run, not part of -k


def documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def rendered(folder: Path) -> list[dict]:
    """What `kubectl kustomize folder` gives for the features these files use: the resources,
    the namespace on each namespaced one, the images' tags."""
    k = documents(folder / "kustomization.yaml")[0]
    tags = {i["name"]: i["newTag"] for i in k.get("images", [])}
    out = []
    for name in k["resources"]:
        for doc in documents(folder / name):
            if doc["kind"] != "Namespace" and "namespace" in k:
                doc["metadata"]["namespace"] = k["namespace"]
            for c in containers(doc):
                if c["image"] in tags:
                    c["image"] = f"{c['image']}:{tags[c['image']]}"
            out.append(doc)
    return out


def every_manifest() -> list[dict]:
    return [*rendered(ROOT), *rendered(ROOT / "kserve"), *documents(ROOT / "trainer-job.yaml")]


def pod_spec(doc: dict) -> dict | None:
    spec = doc.get("spec", {})
    if doc["kind"] in ("Deployment", "Job"):
        return spec["template"]["spec"]
    if doc["kind"] == "ServingRuntime":
        return spec
    return None


def containers(doc: dict) -> list[dict]:
    spec = pod_spec(doc)
    return [*spec.get("initContainers", []), *spec["containers"]] if spec else []


def test_the_kustomizations_name_every_manifest_and_only_those():
    for folder in (ROOT, ROOT / "kserve"):
        listed = set(documents(folder / "kustomization.yaml")[0]["resources"])
        present = {p.name for p in folder.glob("*.yaml")} - {"kustomization.yaml"} - ON_DEMAND
        assert listed == present, folder


@pytest.mark.parametrize("doc", [d for d in every_manifest() if d["kind"] not in KSERVE_KINDS],
                         ids=lambda d: f"{d['kind']}/{d['metadata'].get('name') or d['metadata']['generateName']}")
def test_kubernetes_resources_validate_against_the_kubernetes_schemas(doc):
    kubernetes_validate.validate(doc, kubernetes_validate.utils.latest_version(), strict=True)


def kserve_models():
    """The KServe SDK's generated models (`kserve.models`), without running `kserve/__init__`: that
    starts importing KServe's model server, whose gRPC protos clash with tritonclient's (both
    define `inference.ServerLiveRequest`) in one process."""
    if "kserve" not in sys.modules:
        pkg = types.ModuleType("kserve")
        pkg.__path__ = list(importlib.util.find_spec("kserve").submodule_search_locations)
        sys.modules["kserve"] = pkg
    return importlib.import_module("kserve.models")


def sdk_object(type_name: str, value):
    """`value` built as the KServe SDK's (and the kubernetes client's) model `type_name`, every key
    checked against the model's fields: an unknown key raises KeyError, a missing required one or
    a value outside an enum the model's ValueError."""
    import kubernetes.client.models

    models = kserve_models()
    # the SDK writes list[T] and dict(str, T); the kubernetes client List[T] and Dict[str, T]
    if type_name.lower().startswith("list["):
        return [sdk_object(type_name[5:-1], v) for v in value]
    if type_name.lower().startswith(("dict(", "dict[")):
        inner = type_name[5:-1].split(", ", 1)[1]
        return {k: sdk_object(inner, v) for k, v in value.items()}
    if type_name in ("str", "int", "bool", "float", "object", "datetime", "ResourceQuantity", "IntOrString"):
        assert isinstance(value, (str, int, float, bool, dict, list)), (type_name, value)
        return value
    cls = getattr(models, type_name, None) or getattr(kubernetes.client.models, type_name)
    by_json = {v: k for k, v in cls.attribute_map.items()}
    unknown = set(value) - set(by_json)
    if unknown:
        raise KeyError(f"{type_name} has no field {sorted(unknown)}")
    return cls(**{by_json[k]: sdk_object(cls.openapi_types[by_json[k]], v) for k, v in value.items()})


@pytest.mark.parametrize("doc", [d for d in every_manifest() if d["kind"] in KSERVE_KINDS],
                         ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_kserve_resources_are_the_kserve_sdks_models(doc):
    built = sdk_object(KSERVE_KINDS[doc["kind"]], {k: v for k, v in doc.items() if k != "apiVersion"})
    assert built.kind == doc["kind"]
    assert doc["apiVersion"] == {"InferenceService": "serving.kserve.io/v1beta1",
                                 "ServingRuntime": "serving.kserve.io/v1alpha1"}[doc["kind"]]


def test_sdk_validation_refuses_a_misspelt_field():
    with pytest.raises(KeyError, match="protocol_version|protocolVerison"):
        sdk_object("V1beta1ModelSpec", {"modelFormat": {"name": "rescam"}, "protocolVerison": "v2"})


def test_the_kserve_predictor_is_rescam_on_8080_speaking_v2():
    runtime = next(d for d in every_manifest() if d["kind"] == "ServingRuntime")
    [container] = runtime["spec"]["containers"]
    assert container["name"] == "kserve-container" and runtime["spec"]["protocolVersions"] == ["v2"]
    assert [p["containerPort"] for p in container["ports"]] == [8080]
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    services = {d["metadata"]["name"]: d for d in every_manifest() if d["kind"] == "InferenceService"}
    assert services["rescam"]["spec"]["predictor"]["model"]["runtime"] == runtime["metadata"]["name"]
    assert {s["spec"]["predictor"]["model"]["protocolVersion"] for s in services.values()} == {"v2"}
    assert services["rescam-triton"]["spec"]["predictor"]["model"]["modelFormat"]["name"] == "triton"


def rescam_containers() -> list[dict]:
    return [c for d in every_manifest() for c in containers(d) if c.get("command", [""])[0] == "rescam"]


def test_every_rescam_command_parses_and_serves_on_the_port_it_declares():
    parser = build_parser()
    for c in rescam_containers():
        args = parser.parse_args(c["command"][1:] + c.get("args", []))
        if c["command"][1] == "serve":
            assert [p["containerPort"] for p in c["ports"]] == [args.port], c["name"]
            for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                if probe in c:
                    assert c[probe]["httpGet"]["port"] in (args.port, c["ports"][0].get("name")), (c["name"], probe)
    trainer = documents(ROOT / "trainer-job.yaml")[0]
    [c] = containers(trainer)
    script = c["args"][0].replace("$( [ -f \"/srv/data/datasets/$DATASET/boxes.csv\" ] && echo --boxes-csv "
                                  "\"/srv/data/datasets/$DATASET/boxes.csv\" )", "--boxes-csv b.csv")
    words = shlex.split(re.sub(r"\$\(date [^)]*\)", "now", script.replace("$DATASET", "digits")))
    assert words[:2] == ["exec", "rescam"]
    args = parser.parse_args(words[2:])
    assert args.data == "folder:/srv/data/datasets/digits" and args.registry == "/srv/registry"
    assert trainer["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_every_rescam_variable_is_a_setting():
    fields = set(Settings.model_fields)
    for c in (c for d in every_manifest() for c in containers(d)):
        for env in c.get("env", []):
            if env["name"].startswith("RESCAM_"):
                assert env["name"].removeprefix("RESCAM_").lower() in fields, env["name"]


def test_the_probe_paths_answer_on_a_running_service(tiny_model, tmp_path):
    paths = {c[p]["httpGet"]["path"] for d in every_manifest() for c in containers(d)
             for p in ("readinessProbe", "livenessProbe", "startupProbe") if p in c}
    assert paths == {"/readyz", "/healthz", "/v2/health/ready", "/v2/health/live"}
    settings = Settings(registry=tiny_model.registry, data_root=tmp_path, providers=["CPUExecutionProvider"],
                        run_jobs=False)
    with TestClient(create_app(settings)) as client:
        for path in sorted(paths):
            assert client.get(path).status_code == 200, path
    empty = Settings(registry=tmp_path / "empty", data_root=tmp_path, providers=["CPUExecutionProvider"],
                     run_jobs=False)
    with TestClient(create_app(empty)) as client:  # nothing deployed: alive, not ready
        assert client.get("/healthz").status_code == 200 and client.get("/v2/health/live").status_code == 200
        assert client.get("/readyz").status_code == 503 and client.get("/v2/health/ready").status_code == 503
