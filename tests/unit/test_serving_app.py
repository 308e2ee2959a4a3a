"""The HTTP app over a stand-in predictor (no model): what a runtime failure, a deeply nested body and one bad
request among good ones are answered; how entities are grouped from word tags."""

from __future__ import annotations

from types import SimpleNamespace

from starlette.testclient import TestClient

from lmcompress.serving.app import create_app
from lmcompress.serving.predictor import ModelCard, group_entities


def stand_in(predict) -> SimpleNamespace:
    card = ModelCard(run="stand-in", task="text-classification", runtime="torch", precision="fp32",
                     labels=["neg", "pos"], max_length=16, params=0)
    return SimpleNamespace(card=card, predict=predict)


def labels(texts, pairs):
    if any("boom" in t for t in texts):
        raise RuntimeError("the runtime failed")
    return [{"label": "pos", "score": 1.0} for _ in texts]


def test_a_runtime_failure_is_a_json_500_and_the_server_goes_on():
    with TestClient(create_app(stand_in(labels), max_wait_ms=0)) as client:
        reply = client.post("/predict", json={"text": "boom"})
        assert reply.status_code == 500 and "RuntimeError: the runtime failed" in reply.json()["error"]
        assert client.post("/predict", json={"text": "fine"}).json() == {"predictions": [{"label": "pos", "score": 1.0}]}
        deep = client.post("/predict", content=b"[" * 100_000 + b"]" * 100_000,
                           headers={"content-type": "application/json"})
        assert deep.status_code == 400 and "nests" in deep.json()["error"]
        assert 'lmcompress_requests_total{status="500"} 1.0' in client.get("/metrics").text


def test_one_failing_request_in_a_batch_leaves_the_others_answered():
    import concurrent.futures

    with TestClient(create_app(stand_in(labels), max_batch=8, max_wait_ms=300)) as client:
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            replies = list(pool.map(lambda t: client.post("/predict", json={"text": t}), ["a", "boom", "b"]))
    assert [r.status_code for r in replies] == [200, 500, 200]


def test_entities_from_bio_bioes_and_bare_tags():
    text = "Ann Lee met Bob in Paris"
    spans = [(0, 3), (4, 7), (8, 11), (12, 15), (16, 18), (19, 24)]

    def words(*tags):
        return [(tag, 0.5 + i / 20, *span) for i, (tag, span) in enumerate(zip(tags, spans))]

    def found(entities):
        return [(e["entity_group"], e["word"]) for e in entities]

    assert found(group_entities(text, words("B-PER", "I-PER", "O", "B-PER", "O", "B-LOC"))) == [
        ("PER", "Ann Lee"), ("PER", "Bob"), ("LOC", "Paris")]
    assert found(group_entities(text, words("B-PER", "E-PER", "O", "S-PER", "O", "U-LOC"))) == [
        ("PER", "Ann Lee"), ("PER", "Bob"), ("LOC", "Paris")]
    assert found(group_entities(text, words("I-PER", "I-LOC", "O", "PER", "O", "E-LOC"))) == [
        ("PER", "Ann"), ("LOC", "Lee"), ("PER", "Bob"), ("LOC", "Paris")]  # I-/E- without an open entity start one
    assert found(group_entities(text, words("S-PER", "I-PER", "O", "O", "O", "O"))) == [("PER", "Ann"), ("PER", "Lee")]
    first = group_entities(text, words("B-PER", "I-PER", "O", "O", "O", "O"))[0]
    assert (first["start"], first["end"]) == (0, 7) and first["score"] == 0.525  # the mean of its words' 0.5, 0.55


def test_a_jsonl_line_stays_one_line_for_every_line_splitter():
    import json

    from lmcompress.stages.predict import json_line

    record = {"text": "caf\u00e9\u2028next\u2029para\x85nel", "label": "pos"}
    line = json_line(record)
    assert line.endswith("\n") and len(line.splitlines()) == 1 and "caf\u00e9" in line
    assert json.loads(line) == record
