"""Models named by Hugging Face Hub id: `org/name` or `org/name@revision` (a branch, tag or commit).

The local Hugging Face cache is looked up first; the network is reached only because the user named a Hub id, and
never under HF_HUB_OFFLINE=1, where an id that is not cached is one line saying what to do. A run records the id,
the revision asked for and the commit it resolved to.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from huggingface_hub import snapshot_download
from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError,
                                    RevisionNotFoundError)

from ..errors import LmcError

HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)(?:@(?P<revision>[\w.][\w./-]*))?$")
# what a checkpoint needs; other files of a repository (other formats, ONNX exports, images) are not fetched
CHECKPOINT_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "tokenizer*", "*.py"]


def is_hub_id(spec: str) -> bool:
    """`org/name[@revision]` that is not an existing path."""
    return bool(HUB_ID.match(spec)) and not Path(spec).expanduser().exists()


def _cache_dir() -> Path:
    """The hub cache as the environment says now (huggingface_hub reads it once, at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    return Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")).expanduser() / "hub"


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def resolve_hub_id(spec: str, role: str) -> tuple[Path, dict[str, str]]:
    """A Hub id -> (the snapshot folder, {"hub_id", "revision", "commit"})."""
    match = HUB_ID.match(spec)
    repo, revision = match["repo"], match["revision"]
    asked = f"{repo}@{revision}" if revision else repo
    cache = _cache_dir()
    try:
        folder = snapshot_download(repo, revision=revision, cache_dir=cache, local_files_only=True)
    except LocalEntryNotFoundError:
        if _offline():
            raise LmcError(f"{role} {asked} is not in the Hugging Face cache ({cache}) and HF_HUB_OFFLINE is set: "
                           f"download it where there is network (hf download {repo}"
                           f"{f' --revision {revision}' if revision else ''}) and copy the cache here, or unset "
                           "HF_HUB_OFFLINE") from None
        folder = _download(repo, revision, cache, role, asked)
    return Path(folder), {"hub_id": repo, "revision": revision or "main", "commit": Path(folder).name}


def _download(repo: str, revision: str | None, cache: Path, role: str, asked: str) -> str:
    try:
        return snapshot_download(repo, revision=revision, cache_dir=cache, allow_patterns=CHECKPOINT_FILES)
    except RevisionNotFoundError:
        raise LmcError(f"{role} {asked}: the repository has no revision {revision}") from None
    except GatedRepoError:
        raise LmcError(f"{role} {asked} is gated: accept its terms on the Hub and log in (hf auth login)") from None
    except RepositoryNotFoundError:
        raise LmcError(f"{role} {asked}: no such model on the Hugging Face Hub (or it is private)") from None
    except (HfHubHTTPError, OSError) as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise LmcError(f"{role} {asked}: cannot download it ({first})") from None
