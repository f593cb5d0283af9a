#!/usr/bin/env bash
# Every GPU figure of docs/performance.md and docs/serving.md in one short run (4 steps with their own time
# limits, 720 s at most; add COMPILE=1 for the torch.compile decode figure).
#
# The device machine has PyTorch, Pillow, safetensors, tokenizers, numpy, tqdm and matplotlib, but not PyAV,
# and it cannot download. So, on the development machine first (once):
#     bash benchmarks/gpu.sh --fetch-wheels        # PyAV wheel for the device's Python 3.12 into .whl/
# then run this script there with .whl carried, e.g. through the device tool:
#     run(command="bash benchmarks/gpu.sh", carry=[".whl"], timeout_s=600)
# Results land in $OUT (or ./gpu-out when OUT is unset): commit them under
# docs/benchmarks/<date>-<card>/ and update docs/performance.md.
set -uo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == "--fetch-wheels" ]]; then
  grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
  mkdir -p .whl
  .venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl "av==18.1.0"
  ls -l .whl
  exit 0
fi

export PYTHONUNBUFFERED=1
OUT="${OUT:-$PWD/gpu-out}"
mkdir -p "$OUT"
PY="${PY:-python3}"
# overrides only for a dry run of this script's plumbing elsewhere (PRESET=tiny DEVICE=cpu DTYPE=float32)
PRESET="${PRESET:-7b}"; DEVICE="${DEVICE:-cuda}"; DTYPE="${DTYPE:-bfloat16}"
if ! $PY -c "import av" 2>/dev/null; then
  if ls .whl/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
  else
    echo "PyAV missing: run 'bash benchmarks/gpu.sh --fetch-wheels' here and carry .whl" >&2
    exit 1
  fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
OWL3="$PY -m owl3.cli"

{
  date -u +"date: %Y-%m-%d %H:%M UTC"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
  nproc | sed 's/^/cpu cores: /'
} | tee "$OUT/env.txt"

run() {  # run NAME CMD...: the command line, then its output, into $OUT/NAME.txt
  local name=$1; shift
  local line="$*"
  echo "\$ owl3 ${line#"$PY -m owl3.cli "}" | tee "$OUT/$name.txt"
  timeout "${STEP_TIMEOUT:-240}" "$@" 2>&1 | grep -v '^\s*$' | tee -a "$OUT/$name.txt"
}

# the counts, overridable only for a dry run of the plumbing (e.g. LAT_IMAGES=1,2 MAX_IMAGES=4,8)
LAT_IMAGES="${LAT_IMAGES:-1,8,32,100,200,400}"
MAX_IMAGES="${MAX_IMAGES:-1000,2000,4000,6000,8000}"
FRAMES="${FRAMES:-32,128}"

# 0. Fail fast (seconds, not minutes) when the package or PyAV does not import.
$PY -c "import av, owl3.cli, owl3.bench.latency; print('owl3 imports, av', av.__version__)" || exit 1

# 1. FTL, decode and memory vs images, 7B-240728 shape, bf16: owl3 vs the official recompute vs concat.
#    Points run by count with the methods interleaved; a method stops at its first out-of-memory count or
#    after a point that took over 20 s (concat's prefill grows with the square of the visual tokens).
#    The 400-image owl3 FTL is the issue's target (<= 1.0 s on one H100).
STEP_TIMEOUT=180 run latency-7b $OWL3 bench latency --preset "$PRESET" --device "$DEVICE" --dtype "$DTYPE" \
  --images "$LAT_IMAGES" --new-tokens 32 --methods owl3,official,concat --stop-after 20 \
  --plot "$OUT/latency-7b.png"

# 2. The largest image count that fits: owl3 only, growing until the first out-of-memory.
STEP_TIMEOUT=120 run max-images-7b $OWL3 bench latency --preset "$PRESET" --device "$DEVICE" --dtype "$DTYPE" \
  --images "$MAX_IMAGES" --new-tokens 2 --methods owl3 --stop-after 60

# 2b. A/B of the split prefill (owl3/model/hyper.py, on by default on CUDA): the same 1000 images with the
#     masked cross-attention prefill that ran before it (66 s of FTL at 3000 images on 2026-11-26).
STEP_TIMEOUT=60 run masked-prefill-7b $OWL3 bench latency --preset "$PRESET" \
  --device "$DEVICE" --dtype "$DTYPE" --images "${AB_IMAGES:-1000}" --new-tokens 2 --methods owl3 \
  --split-prefill off

# 3. Watch once, ask many: a follow-up question from a saved memory vs the first question.
STEP_TIMEOUT=60 run memory-7b $OWL3 bench memory --preset "$PRESET" --device "$DEVICE" --dtype "$DTYPE" \
  --frames "$FRAMES" --seconds 300

# 4. Optional (COMPILE=1, at most 70 s more): the decode step through torch.compile.
if [[ "${COMPILE:-0}" == 1 ]]; then
  STEP_TIMEOUT=70 run compile-7b $OWL3 bench latency --preset "$PRESET" --device "$DEVICE" --dtype "$DTYPE" \
    --images 1,32 --new-tokens 64 --methods owl3 --compile
fi

# 5. Serving: continuous batching (16 slots) against one request at a time, 1, 4 and 16 streaming HTTP
#    clients, and a follow-up turn that resends a 32-frame video (the checkpoint is written in $DTYPE first).
STEP_TIMEOUT=300 run serve-7b $OWL3 bench serve --preset "$PRESET" --device "$DEVICE" --dtype "$DTYPE" \
  --clients "${CLIENTS:-1,4,16}" --new-tokens 64

ls -l "$OUT"
