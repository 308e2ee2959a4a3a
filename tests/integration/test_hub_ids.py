"""Models named by Hub id (org/name[@revision]) through finetune and distill, from a Hugging Face cache built by hand
(models--org--name/snapshots/<commit>/..., refs/<branch>), offline as in CI."""

from __future__ import annotations

import json
import shutil

import pytest

from .cli_helpers import one_error_line, run_cli

COMMON = ["--epochs", "1", "--batch-size", "16", "--max-length", "32", "--quiet"]


def _cache(root, repo: str, folder, commit: str, refs: tuple[str, ...] = ("main",)) -> None:
    """`folder`'s checkpoint files as snapshot `commit` of `repo`, which `refs` point to."""
    base = root / ("models--" + repo.replace("/", "--"))
    snapshot = base / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for path in folder.iterdir():
        if path.is_file():
            shutil.copy2(path, snapshot / path.name)
    (base / "refs").mkdir(exist_ok=True)
    for ref in refs:
        (base / "refs" / ref).write_text(commit)


@pytest.fixture
def hub_cache(tmp_path, monkeypatch, tiny_bert_dir, tiny_teacher_run):
    root = tmp_path / "hf" / "hub"
    _cache(root, "tiny-org/bert", tiny_bert_dir, "a" * 40)
    _cache(root, "tiny-org/bert", tiny_bert_dir, "b" * 40, refs=("v2",))
    _cache(root, "tiny-org/sentiment-teacher", tiny_teacher_run, "c" * 40)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return root


def test_a_cached_id_and_an_id_at_a_revision_fine_tune_and_record_the_commit(hub_cache, sentiment_csv, tmp_path,
                                                                              capsys):
    for spec, commit in (("tiny-org/bert", "a" * 40), ("tiny-org/bert@v2", "b" * 40),
                         ("tiny-org/bert@" + "b" * 40, "b" * 40)):
        out = tmp_path / commit[:1] / spec.replace("/", "_")
        code, _, err = run_cli(["finetune", "--model", spec, "--data", str(sentiment_csv), "--out", str(out),
                                *COMMON], capsys)
        assert code == 0, err
        manifest = json.loads((out / "lmcompress.json").read_text())
        assert manifest["hub"]["hub_id"] == "tiny-org/bert" and manifest["hub"]["commit"] == commit
        assert manifest["parent"].endswith(commit)


def test_a_teacher_and_a_student_named_by_hub_id_distill(hub_cache, tmp_path, capsys):
    out = tmp_path / "student"
    code, _, err = run_cli(["distill", "--teacher", "tiny-org/sentiment-teacher", "--student", "tiny-org/bert@v2",
                            "--out", str(out), "--no-cache", *COMMON], capsys)
    assert code == 0, err
    manifest = json.loads((out / "lmcompress.json").read_text())
    assert manifest["teacher_hub"] == {"hub_id": "tiny-org/sentiment-teacher", "revision": "main",
                                       "commit": "c" * 40}
    assert manifest["student"]["spec"] == "tiny-org/bert@v2"


@pytest.mark.parametrize("spec, fragments", [
    ("tiny-org/not-cached", ["tiny-org/not-cached is not in the Hugging Face cache", "HF_HUB_OFFLINE",
                             "hf download tiny-org/not-cached"]),
    ("tiny-org/bert@v9", ["tiny-org/bert@v9 is not in the Hugging Face cache", "--revision v9"]),
])
def test_an_id_or_revision_missing_offline_is_one_line_and_writes_nothing(hub_cache, sentiment_csv, tmp_path, capsys,
                                                                           spec, fragments):
    for args in (["finetune", "--model", spec, "--data", str(sentiment_csv)],
                 ["distill", "--teacher", spec, "--student", "layers=1"]):
        out = tmp_path / "run"
        code, _, err = run_cli([*args, "--out", str(out), *COMMON], capsys)
        assert code == 1
        one_error_line(err, *fragments)
        assert not out.exists() and not (tmp_path / ".run.partial").exists()
