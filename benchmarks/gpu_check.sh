#!/usr/bin/env bash
# GPU check (one prepared script, < 8 minutes on one GPU before the auto step, which takes 5 more). Runs the real CLI
# on CUDA:
#   1. finetune minilm-l6 on rotten-tomatoes (bf16 autocast, CUDA)
#   2. distill it into its 2 evenly spaced layers with the teacher-output cache (2 epochs: the 2nd reads the cache)
#   3. pretrain a tiny GPT-2 teacher (CLM) and distill-lm it into a 2-layer GPT-2 with a top-k logit cache
#   4. compare teacher and student (CPU latency, the report's contract) + CUDA latency fp32 / bf16 (gpu_latency.py)
#   5. a 1-process torchrun launch of distill on NCCL
#   6. auto on the fine-tuned teacher (5-minute budget): the report's line says where each model trained
# Inputs travel in .gpu/ (made here by `bash benchmarks/gpu_prep.sh`: wheels the device image lacks, minilm-l6 in
# fp16 to fit the transfer limit, rotten-tomatoes as a CSV). Figures go to $OUT/gpu_check.{json,md}.
# Usage on the device: bash benchmarks/gpu_check.sh   (OUT defaults to runs/gpu-check)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu-check}; mkdir -p "$OUT"
W=/tmp/gpu-check; rm -rf "$W"; mkdir -p "$W"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PY=${PY:-python3}
if ! $PY -c "import datasets" 2>/dev/null; then  # the device image has no `datasets`: the carried wheels
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpu/whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
  if ! $PY -c "import datasets"; then  # too old a pyarrow for the newest datasets: an older one
    rm -rf /tmp/site; $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
      .gpu/whl-old/*.whl || exit 1
  fi
fi
if ! $PY -c "import seqeval, mwparserfromhell" 2>/dev/null; then  # lmcompress's imports the image lacks
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site-extra .gpu/whl-extra/*.whl \
    || exit 1
  export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}/tmp/site-extra
fi
$PY -m pip list 2>/dev/null | grep -iE "^(torch|transformers|datasets|accelerate|pyarrow|tokenizers|onnxruntime) "
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD/src
# every stage imports the whole package: one clear line now instead of each step failing on the same import
$PY -c "import lmcompress.api, lmcompress.cli" || { echo "lmcompress does not import on this image"; exit 1; }
# QUICK=1: a smoke run of every step on a few rows (to check the script on a CPU before spending device time)
CAP=""; STEPS=300; PREC=bf16
[ -n "${QUICK:-}" ] && CAP="--max-train-examples 128" && STEPS=10 && PREC=fp32  # this CPU may lack bf16 kernels
LOG="$OUT/gpu_check.log"; : > "$LOG"
declare -A WALL RC
step() {  # step NAME command...  -> wall seconds and exit status per step, output appended to the log
  local name=$1; shift; echo "== $name: $*" | tee -a "$LOG"
  local t0=$(date +%s.%N); "$@" >>"$LOG" 2>&1; RC[$name]=$?
  WALL[$name]=$(python3 -c "import time; print(round(time.time() - $t0, 1))")
  echo "   rc=${RC[$name]} wall=${WALL[$name]}s" | tee -a "$LOG"; tail -3 "$LOG"
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
$PY - <<'PY' || exit 1
import torch, safetensors.torch as st, shutil, pathlib
src, dst = pathlib.Path(".gpu/minilm-l6"), pathlib.Path("/tmp/gpu-check/minilm-l6")  # fp16 -> fp32 once
shutil.copytree(src, dst)
st.save_file({k: v.float() for k, v in st.load_file(dst / "model.safetensors").items()}, str(dst / "model.safetensors"))
print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.is_available() and torch.cuda.get_device_name(0))
PY
LMC="$PY -m lmcompress"
DATA=.gpu/rotten_tomatoes.csv
COMMON="--data $DATA --text-column text --label-column label --max-length 64 $CAP"
step finetune $LMC finetune --model $W/minilm-l6 $COMMON --out $W/teacher --epochs 3 --precision $PREC --batch-size 32
step distill $LMC distill --teacher $W/teacher --student layers=2 --out $W/student --epochs 2 --hidden-weight 1 \
  --precision $PREC --cache-dir $W/cache
step pretrain_gpt2 $LMC pretrain --model gpt2-4l-256h --train-tokenizer 8000 --objective clm --data .gpu/rt_text.txt \
  --out $W/gpt2-teacher --max-steps $STEPS --precision $PREC --max-length 128
step distill_lm $LMC distill-lm --teacher $W/gpt2-teacher --student layers=2 --top-k 32 --data .gpu/rt_text.txt \
  --out $W/gpt2-student --epochs 2 ${QUICK:+--max-documents 200} --precision $PREC --max-length 128 --cache-dir $W/cache
# auto: screening and training on CUDA, every timing on the CPU threads; 5 minutes for one shortlisted shape and the
# static student on 2,000 rows, PyTorch only (no int8 exports to time)
step auto $LMC auto --teacher $W/teacher --min-retention 0.97 --min-speedup 10 --time-budget 5m --shortlist 1 \
  --screen-rows 256 --epochs 1 --backend torch --donors none --augment-spans 0 ${CAP:---max-train-examples 2000} \
  --out $W/auto
step compare $LMC compare $W/teacher $W/student --out $W/report --latency-repeats 10
cp $W/report/report.json "$OUT/compare_report.json" 2>/dev/null
step cuda_latency $PY benchmarks/gpu_latency.py $W/teacher $W/student --out "$OUT/cuda_latency.json"
step torchrun_nccl env NCCL_DEBUG=INFO $PY -m torch.distributed.run --standalone --nproc_per_node 1 -m lmcompress distill --teacher $W/teacher \
  --student layers=2 --out $W/student-ddp --epochs 1 --precision $PREC --cache-dir $W/cache-ddp
for name in "${!WALL[@]}"; do echo "$name ${RC[$name]} ${WALL[$name]}"; done > "$W/steps.txt"
$PY benchmarks/gpu_summary.py "$W" "$OUT" || exit 1
