"""Whether transformers may run Python code shipped inside model folders: off unless the user passes
--trust-remote-code (or calls `lmcompress.allow_remote_code(True)`)."""

from __future__ import annotations

import logging

log = logging.getLogger("lmcompress")
_REMOTE_CODE = {"allowed": False}


def allow_remote_code(allowed: bool) -> None:
    """Let transformers run Python files shipped inside model folders (`--trust-remote-code`); off by default."""
    _REMOTE_CODE["allowed"] = allowed
    if allowed:
        log.warning("--trust-remote-code: Python code shipped inside model folders will run in this process")


def remote_code_allowed() -> bool:
    return _REMOTE_CODE["allowed"]
