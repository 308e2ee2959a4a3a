"""Opt-in (`scripts/test.sh -m slow`): the quick demo on the real minilm-l6 and rotten-tomatoes (teacher on
1,000 rows, then a 20-minute `auto` search)."""

import json

import pytest
from lmcompress import catalog
from lmcompress.cli import main

pytestmark = pytest.mark.slow


def test_quick_demo_on_real_model_and_data(tmp_path):
    for name in ("minilm-l6", "rotten-tomatoes"):
        if catalog.get(name).locate() is None:
            pytest.skip(f"{name} not installed (bash scripts/setup.sh --with-zoo)")
    assert main(["demo", "--quick", "--out", str(tmp_path)]) == 0
    root = tmp_path / "quick"
    metrics = json.loads((root / "teacher" / "metrics.json").read_text())
    assert metrics["examples"] == 1281  # the fixed test split
    assert metrics["metrics"]["accuracy"] > 0.6  # well above the 0.58 majority class after 1,000 examples
    report = json.loads((root / "auto" / "report" / "report.json").read_text())
    assert report["rows"][0]["name"] == "teacher" and report["chosen"] in [r["name"] for r in report["rows"][1:]]
    assert all(r["value"] > 0.5 for r in report["rows"])
    assert report["auto"]["verdict"].startswith(("target met", "target not met"))
    assert (root / "auto" / "best" / "config.json").is_file()
    assert main(["demo", "--quick", "--out", str(tmp_path)]) == 0  # idempotent: every step reused
