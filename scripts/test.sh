#!/usr/bin/env bash
# The test command of the README: set up (idempotent), lint, and run the suite on tiny random models: unit,
# integration and distributed tiers (everything but the opt-in real-model tests, `-m slow`); lint is ruff and
# import-linter (the package layers declared in pyproject.toml).
#   bash scripts/test.sh            what CI runs
#   bash scripts/test.sh unit       the edit loop: unit tests only (under a minute), no lint
#   bash scripts/test.sh ARGS...    any other pytest arguments, e.g. -m slow, -k resume
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if [ "${1:-}" = "unit" ]; then
  shift
  exec .venv/bin/python -m pytest -q -m unit "$@"
fi
if [ $# -eq 0 ]; then
  .venv/bin/ruff check src tests benchmarks
  .venv/bin/lint-imports --no-cache
fi
exec .venv/bin/python -m pytest -q "$@"
