#!/usr/bin/env bash
# The test command of the README: set up (idempotent) and run the suite (unit + integration, tiny random models).
# Real-model tests are opt-in: scripts/test.sh -m slow
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/python -m pytest -q "$@"
