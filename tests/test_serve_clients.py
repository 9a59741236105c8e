"""The service as clients nobody here wrote see it: huggingface_hub's InferenceClient, the OpenAPI
document (answers validated against it with jsonschema), and urllib sending a 20 MB body."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

pytest.importorskip("fastapi")
jsonschema = pytest.importorskip("jsonschema")

from tests.helpers.serve import REPO, get_json, post_json, running_service  # noqa: E402

TEXTS = [
    "The committee will publish its annual report on the first of March.",
    "¿Alguien sabe dónde comprar pan sin gluten en Sevilla? Gracias de antemano.",
]

HF_CLIENT = """
import json, sys
from huggingface_hub import InferenceClient
client = InferenceClient(base_url=sys.argv[1])
out = {
    "one": client.text_classification(sys.argv[2]),
    "top1": client.text_classification(sys.argv[2], top_k=1),
    "softmax": client.text_classification(sys.argv[2], function_to_apply="softmax"),
}
print(json.dumps({k: [[e.label, e.score] for e in v] for k, v in out.items()}))
"""


@pytest.fixture(scope="module")
def service(tiny_model_dir):
    with running_service(tiny_model_dir, "--max-body-bytes", "65536", "--max-texts", "8") as (base, proc):
        yield base, proc


def run_hf_client(base: str, text: str, offline: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    if offline is not None:
        env["HF_HUB_OFFLINE"] = offline
    return subprocess.run(
        [sys.executable, "-c", HF_CLIENT, base, text], env=env, cwd=REPO, capture_output=True, text=True,
        timeout=120,
    )


def test_hugging_face_inference_client_gets_a_list_of_labels_with_the_decision_first(service):
    base, _ = service
    record = post_json(base + "/v1/score", {"text": TEXTS[0]})[1]["records"][0]
    done = run_hf_client(base, TEXTS[0], offline=None)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    first = "generated" if record["is_bot"] else "human"
    assert [label for label, _ in got["one"]] == [first, {"generated": "human", "human": "generated"}[first]]
    scores = dict(got["one"])
    assert scores == pytest.approx({"generated": record["bot_prob"], "human": 1 - record["bot_prob"]})
    assert got["top1"] == got["one"][:1]  # top_k has its effect
    assert got["softmax"] == got["one"]  # the binary head: softmax and sigmoid agree


def test_hf_hub_offline_stops_the_client_itself_not_the_service(service):
    """huggingface_hub refuses every request under HF_HUB_OFFLINE=1, localhost included (README says so)."""
    base, _ = service
    done = run_hf_client(base, TEXTS[0], offline="1")
    assert done.returncode != 0 and "OfflineModeIsEnabled" in done.stderr
    assert run_hf_client(base, TEXTS[0], offline="0").returncode == 0


def _validator(doc: dict, pointer: dict):
    """A jsonschema validator for ``pointer`` (a schema inside the OpenAPI document; refs resolved in it)."""
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT202012

    registry = Registry().with_resource("urn:openapi", Resource(doc, specification=DRAFT202012))
    return jsonschema.Draft202012Validator({"$ref": "urn:openapi#" + pointer}, registry=registry)


def _json_pointer(path: str, method: str, part: str) -> str:
    escaped = path.replace("~", "~0").replace("/", "~1")
    if part == "request":
        return f"/paths/{escaped}/{method}/requestBody/content/application~1json/schema"
    return f"/paths/{escaped}/{method}/responses/{part}/content/application~1json/schema"


ACCEPTED = {
    "/v1/score": [
        {"texts": TEXTS},
        {"text": TEXTS[0], "segments": "sentence"},
        {"texts": [" ".join(TEXTS * 20)], "segments": "window"},
    ],
    "/": [
        {"inputs": TEXTS[0]},
        {"inputs": TEXTS, "parameters": {"top_k": 1}},
        {"inputs": "x", "options": {}},
    ],
}
REFUSED = {
    "/v1/score": [
        {}, {"texts": []}, {"texts": "a"}, {"text": 1}, {"text": "a", "segments": "page"},
        {"text": "a", "threshold": 0.1}, {"texts": ["a"] * 9}, {"text": "a", "operating_point": "x"},
    ],
    "/": [{"inputs": []}, {"inputs": [1]}, {"inputs": "a", "parameters": {"top_k": 0}}, {"parameters": {}},
          {"inputs": "a", "parameters": {"function_to_apply": "none"}}],
}


def test_answers_and_requests_match_the_published_openapi_document(service):
    base, _ = service
    status, doc = get_json(base + "/openapi.json")
    assert status == 200 and doc["openapi"].startswith("3.")
    with urllib.request.urlopen(base + "/docs", timeout=10) as page:
        assert page.status == 200 and "/openapi.json" in page.read().decode()
    # The limits the service runs with are the ones published.
    score_request = doc["components"]["schemas"]["ScoreRequest"]["properties"]
    limits = get_json(base + "/v1/info")[1]["limits"]
    assert score_request["texts"]["anyOf"][0]["maxItems"] == limits["max_texts"]
    for path, bodies in ACCEPTED.items():
        request = _validator(doc, _json_pointer(path, "post", "request"))
        answer = _validator(doc, _json_pointer(path, "post", "200"))
        for body in bodies:
            request.validate(body)
            status, got = post_json(base + path, body)
            assert status == 200, got
            answer.validate(got)
    for path, bodies in REFUSED.items():
        request = _validator(doc, _json_pointer(path, "post", "request"))
        for body in bodies:
            status, got = post_json(base + path, body)
            assert status in (413, 422), (body, status, got)
            assert not request.is_valid(body), body  # the document refuses what the service refuses
            _validator(doc, _json_pointer(path, "post", str(status))).validate(got)
    info = _validator(doc, _json_pointer("/v1/info", "get", "200"))
    info.validate(get_json(base + "/v1/info")[1])


def test_urllib_reads_the_413_for_a_20_mb_body(service):
    """urllib writes the whole body before it reads: the service drains it (up to a bound) and answers."""
    base, proc = service
    body = b'{"text": "' + b"x" * (20 << 20) + b'"}'
    headers = {"Content-Type": "application/json"}
    request = urllib.request.Request(base + "/v1/score", data=body, headers=headers)
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=60)
    assert caught.value.code == 413
    assert "over 65536 bytes" in json.loads(caught.value.read())["error"]
    assert proc.poll() is None and get_json(base + "/healthz")[0] == 200
