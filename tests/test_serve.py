"""The service in-process: the batching queue, request checking and limits, records, the HF shape."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

pytest.importorskip("starlette")
pytest.importorskip("httpx")

from starlette.testclient import TestClient  # noqa: E402

import autext_jax  # noqa: E402
from autext_jax.serve.app import ServeLimits, create_app  # noqa: E402
from autext_jax.serve.batching import (  # noqa: E402
    BatchingConfig,
    BatchingQueue,
    QueueClosedError,
    QueueFullError,
    QueueTimeoutError,
)
from tests.helpers.serve import calibrated_copy  # noqa: E402

TEXTS = [
    "The committee will publish its annual report on the first of March.",
    "¿Alguien sabe dónde comprar pan sin gluten en Sevilla? Gracias de antemano.",
    "short",
]


# ---- the batching queue ---------------------------------------------------------------------------


class RecordingScorer:
    """Stands in for the detector in queue tests: records each run's texts, answers with their lengths."""

    def __init__(self, delay_s: float = 0.0, fail_on: str | None = None):
        self.runs: list[list[str]] = []
        self.delay_s = delay_s
        self.fail_on = fail_on
        self.lock = threading.Lock()

    def __call__(self, texts, segments, operating_point):
        with self.lock:
            self.runs.append(list(texts))
        time.sleep(self.delay_s)
        if self.fail_on is not None and self.fail_on in texts:
            raise ValueError(f"cannot score {self.fail_on!r}")
        return [{"text": t, "segments": segments, "operating_point": operating_point} for t in texts]


def _submit_all(batcher: BatchingQueue, jobs: list[dict]) -> list:
    async def main():
        return await asyncio.gather(*(batcher.submit(**job) for job in jobs), return_exceptions=True)

    return asyncio.run(main())


def test_queue_gathers_concurrent_jobs_into_few_runs_and_answers_each_in_order():
    scorer = RecordingScorer(delay_s=0.02)
    batcher = BatchingQueue(scorer, BatchingConfig(max_wait_s=0.05, max_texts=1000))
    jobs = [{"texts": [f"job{i}-a", f"job{i}-b"]} for i in range(40)]
    results = _submit_all(batcher, jobs)
    batcher.close(5)
    for i, records in enumerate(results):
        assert [r["text"] for r in records] == [f"job{i}-a", f"job{i}-b"]
    assert sum(len(run) for run in scorer.runs) == 80
    assert len(scorer.runs) <= 3, [len(r) for r in scorer.runs]  # 40 jobs, at most a few engine runs
    assert batcher.stats.jobs == 40 and batcher.stats.texts == 80


def test_queue_caps_a_run_and_groups_by_options():
    scorer = RecordingScorer()
    batcher = BatchingQueue(scorer, BatchingConfig(max_wait_s=0.05, max_texts=4))
    jobs = [{"texts": [f"t{i}"], "segments": "sentence" if i % 2 else None} for i in range(8)]
    results = _submit_all(batcher, jobs)
    batcher.close(5)
    assert all(len(run) <= 4 for run in scorer.runs)
    for i, records in enumerate(results):
        assert records[0]["segments"] == ("sentence" if i % 2 else None)
    for run in scorer.runs:  # a run never mixes options
        assert len({int(t[1:]) % 2 for t in run}) == 1


def test_a_failing_job_does_not_fail_its_neighbours():
    scorer = RecordingScorer(fail_on="bad")
    batcher = BatchingQueue(scorer, BatchingConfig(max_wait_s=0.05))
    results = _submit_all(batcher, [{"texts": ["good1"]}, {"texts": ["bad"]}, {"texts": ["good2"]}])
    batcher.close(5)
    assert results[0][0]["text"] == "good1" and results[2][0]["text"] == "good2"
    assert isinstance(results[1], ValueError)


def test_close_finishes_queued_jobs_then_refuses_new_ones():
    scorer = RecordingScorer(delay_s=0.05)
    batcher = BatchingQueue(scorer, BatchingConfig(max_wait_s=0.0, max_texts=1))

    async def main():
        tasks = [asyncio.ensure_future(batcher.submit([f"t{i}"])) for i in range(5)]
        await asyncio.sleep(0.01)
        await asyncio.get_running_loop().run_in_executor(None, batcher.close)
        done = await asyncio.gather(*tasks)
        with pytest.raises(QueueClosedError):
            await batcher.submit(["late"])
        return done

    done = asyncio.run(main())
    assert [r[0]["text"] for r in done] == [f"t{i}" for i in range(5)]


def test_a_full_queue_refuses_at_once_and_a_late_job_is_dropped_unscored():
    release = threading.Event()
    scorer = RecordingScorer()
    held = lambda texts, segments, op: (release.wait(30), scorer(texts, segments, op))[1]  # noqa: E731
    batcher = BatchingQueue(held, BatchingConfig(max_wait_s=0.0, max_queued_texts=3, request_timeout_s=0.5))

    async def main():
        first = asyncio.ensure_future(batcher.submit(["a", "b"]))  # taken by the worker, held
        await asyncio.sleep(0.05)
        with pytest.raises(QueueFullError) as full:
            await batcher.submit(["c", "d"])  # 2 + 2 > 3: refused without waiting
        assert full.value.retry_after_s >= 1 and batcher.queued_texts == 2
        late = asyncio.ensure_future(batcher.submit(["e"]))  # fits, but waits past the timeout
        with pytest.raises(QueueTimeoutError):
            await late
        with pytest.raises(QueueTimeoutError):
            await first
        release.set()

    asyncio.run(main())
    batcher.close(30)
    assert batcher.queued_texts == 0
    assert [t for run in scorer.runs for t in run] == ["a", "b"]  # "e" was dropped, never scored


# ---- the app, with a real (tiny) detector ----------------------------------------------------------


@pytest.fixture(scope="module")
def detector(tiny_model_dir):
    return autext_jax.load(tiny_model_dir)


@pytest.fixture(scope="module")
def client(detector):
    limits = ServeLimits(max_body_bytes=64 * 1024, max_texts=8, max_chars=2000, body_timeout_s=2.0)
    with TestClient(create_app(detector, limits=limits)) as c:
        yield c


def test_score_returns_the_same_records_as_the_detector(client, detector):
    response = client.post("/v1/score", json={"texts": TEXTS})
    assert response.status_code == 200
    assert response.json() == {"records": detector.score_records(TEXTS)}
    one = client.post("/v1/score", json={"text": TEXTS[1]}).json()
    assert one == {"records": detector.score_records(TEXTS[1:2])}
    record = one["records"][0]
    assert {"bot_prob", "english_prob", "is_bot", "n_chunks", "n_tokens", "short"} <= set(record)


def test_segments_come_back_with_character_offsets(client, detector):
    text = " ".join([TEXTS[0]] * 12)
    record = client.post("/v1/score", json={"text": text, "segments": "sentence"}).json()["records"][0]
    assert record == detector.score_records([text], segments="sentence")[0]
    segments = record["segments"]
    assert segments and segments[0]["start"] == 0 and segments[-1]["end"] <= len(text)
    alone = detector.score([text[s["start"] : s["end"]] for s in segments])["bot_prob"]
    assert [s["bot_prob"] for s in segments] == pytest.approx(alone.tolist(), abs=1e-6)  # each scored alone


def test_hugging_face_shape_puts_the_decision_first(client, detector):
    """A list of label lists, one per text (a string is one text); the first label is ``is_bot``'s."""
    records = detector.score_records(TEXTS)
    single = client.post("/", json={"inputs": TEXTS[0]}).json()
    assert len(single) == 1 and len(single[0]) == 2
    batch = client.post("/", json={"inputs": TEXTS}).json()
    assert len(batch) == len(TEXTS)
    for labels, record in zip(batch, records, strict=True):
        p = record["bot_prob"]
        assert {d["label"]: d["score"] for d in labels} == pytest.approx({"generated": p, "human": 1 - p})
        assert labels[0]["label"] == ("generated" if record["is_bot"] else "human")
    assert [d["label"] for d in single[0]] == [d["label"] for d in batch[0]]  # scored alone: same to 1e-6
    assert [d["score"] for d in single[0]] == pytest.approx([d["score"] for d in batch[0]], abs=1e-6)
    top1 = client.post("/", json={"inputs": TEXTS, "parameters": {"top_k": 1}}).json()
    assert top1 == [labels[:1] for labels in batch]


def test_hugging_face_first_label_follows_the_threshold_not_the_higher_probability(tiny_model_dir):
    """With the threshold above a text's probability, the answer says "human" though p > 0.5 (and back)."""
    detector = autext_jax.load(tiny_model_dir)
    p = detector.score_records(TEXTS[:1])[0]["bot_prob"]
    for threshold, first in [(min(p + 0.01, 1.0), "human"), (max(p - 0.01, 0.0), "generated")]:
        with TestClient(create_app(autext_jax.load(tiny_model_dir, threshold=threshold))) as c:
            assert c.post("/", json={"inputs": TEXTS[0]}).json()[0][0]["label"] == first


def test_hugging_face_unknown_keys_are_ignored_and_named(client):
    body = {"inputs": "a", "parameters": {"top_k": 1, "truncation": True}, "options": {"wait_for_model": True,
            "x": 1}, "extra": 2}
    response = client.post("/", json=body)
    assert response.status_code == 200 and len(response.json()[0]) == 1
    assert response.headers["X-Ignored-Keys"] == "extra, options.x, parameters.truncation"
    assert "X-Ignored-Keys" not in client.post("/", json={"inputs": "a"}).headers


def test_health_info_and_page(client, detector):
    assert client.get("/healthz").json() == {"status": "ok"}
    info = client.get("/v1/info").json()
    assert info["threshold"] == pytest.approx(detector.threshold)
    assert info["operating_points"] == pytest.approx(detector.operating_points)
    assert info["limits"]["max_texts"] == 8
    page = client.get("/")
    assert page.status_code == 200 and "v1/score" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # self-contained: no CDN


def test_operating_points_are_listed_and_applied(tiny_model_dir, tmp_path):
    calibrated = autext_jax.load(calibrated_copy(tiny_model_dir, tmp_path / "calibrated"))
    assert calibrated.operating_points
    with TestClient(create_app(calibrated)) as c:
        info = c.get("/v1/info").json()
        assert info["operating_points"] == pytest.approx(calibrated.operating_points)
        for name in calibrated.operating_points:
            got = c.post("/v1/score", json={"texts": TEXTS, "operating_point": name}).json()["records"]
            assert got == calibrated.score_records(TEXTS, operating_point=name)
            assert all(r["operating_point"] == name for r in got)
            hf = c.post("/", json={"inputs": TEXTS, "operating_point": name}).json()
            decisions = ["generated" if r["is_bot"] else "human" for r in got]
            assert [labels[0]["label"] for labels in hf] == decisions
        refused = c.post("/v1/score", json={"text": "a", "operating_point": "fpr=0.5"})
        assert refused.status_code == 422 and "fpr=0.01" in refused.json()["error"]


@pytest.mark.parametrize(
    "body, status, says",
    [
        (b"", 400, "empty"),
        (b"   ", 400, "empty"),
        (b'{"texts": ["a"', 400, "malformed JSON"),
        (b'{"texts": [NaN]}', 400, "malformed JSON"),
        (b"\xff\xfe{", 400, "UTF-8"),
        (b'{"text": "caf\xe9"}', 400, "UTF-8"),
        (b"[" * 50_000, 400, "malformed JSON"),  # nesting too deep
        (b'"just a string"', 422, "JSON object"),
        (b"[1, 2]", 422, "JSON object"),
        (b"{}", 422, "exactly one"),
        (b'{"text": "a", "texts": ["b"]}', 422, "exactly one"),
        (b'{"texts": "a"}', 422, "list of strings"),
        (b'{"text": ["a"]}', 422, "must be a string"),
        (b'{"texts": []}', 422, "non-empty"),
        (b'{"texts": ["a", 3]}', 422, "texts[1] must be a string, got a number"),
        (b'{"texts": [null]}', 422, "got null"),
        (b'{"text": {"a": 1}}', 422, "must be a string"),
        (b'{"text": "\\ud800 lone"}', 422, "unpaired surrogate"),
        (b'{"text": "a", "segments": "paragraph"}', 422, "segments"),
        (b'{"text": "a", "segments": 1}', 422, "segments"),
        (b'{"text": "a", "operating_point": "fpr=0.5"}', 422, "unknown operating point"),
        (b'{"text": "a", "operating_point": ["x"]}', 422, "unknown operating point"),
        (b'{"text": "a", "threshold": 0.1}', 422, "unknown fields"),
        (b'{"inputs": "a"}', 422, "POST /"),
        (b'{"texts": ["a", "b", "c", "d", "e", "f", "g", "h", "i"]}', 413, "limit is 8"),
        (b'{"text": "' + b"x" * 2001 + b'"}', 413, "limit is 2000"),
        (b'{"text": "' + b"x" * 70_000 + b'"}', 413, "over 65536 bytes"),
    ],
)
def test_bad_requests_get_a_4xx_json_error(client, body, status, says):
    response = client.post("/v1/score", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == status, response.text
    assert says in response.json()["error"]


@pytest.mark.parametrize(
    "body, status, says",
    [
        (b'{"inputs": "a", "parameters": {"top_k": 0}}', 422, "top_k"),
        (b'{"inputs": "a", "parameters": {"top_k": true}}', 422, "top_k"),
        (b'{"inputs": "a", "parameters": []}', 422, "parameters"),
        (b'{"inputs": "a", "options": 3}', 422, "options"),
        (b'{"inputs": "a", "options": {"use_cache": "no"}}', 422, "options.use_cache"),
        (b'{"inputs": "a", "parameters": {"function_to_apply": "none"}}', 422, "function_to_apply"),
        (b'{"inputs": []}', 422, "non-empty"),
        (b'{"inputs": ["a", 1]}', 422, "inputs[1] must be a string, got a number"),
        (b'{"inputs": 5}', 422, "inputs"),
        (b'{"parameters": {}}', 422, "inputs"),
        (b'{"inputs": "a", "operating_point": "fpr=0.5"}', 422, "unknown operating point"),
        (b'{"inputs": ["a", "b", "c", "d", "e", "f", "g", "h", "i"]}', 413, "limit is 8"),
        (b'{"inputs": "\\udc00"}', 422, "unpaired surrogate"),
    ],
)
def test_bad_hugging_face_requests_get_a_4xx_json_error(client, body, status, says):
    response = client.post("/", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == status, response.text
    assert says in response.json()["error"]


def test_a_body_over_the_limit_without_content_length_is_cut_off(client):
    def chunks():
        for _ in range(100):
            yield b"x" * 1024

    response = client.post("/v1/score", content=chunks())  # chunked: no Content-Length to trust
    assert response.status_code == 413


def test_wrong_routes_and_methods_answer_json(client):
    assert client.get("/v1/score").status_code == 405
    missing = client.get("/nope")
    assert missing.status_code == 404 and "error" in missing.json()
