#!/usr/bin/env bash
# The GPU paths in one prepared run (CI has no GPU): every command on CUDA in bf16 with the
# built-in tiny-shapes model, then full-size random-weight MaskGIT and Lumina-DiMOO timings.
#
#   bash benchmarks/gpu_check.sh [cli] [fullsize]      # default: both; results under $OUT
#
# Each stage is time-boxed and logs to $OUT/<stage>.log; a failing stage does not stop the next.
set -u
OUT=${OUT:-runs/gpu-check}
W=$(mktemp -d)
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 DEVICE=${DEVICE:-cuda} DTYPE=${DTYPE:-bf16}
stages=${*:-cli fullsize}

cli() {
  set -ex
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
  migmcut generate -p "a large red circle" -p "a small blue square" -n 4 --steps 16 \
    --device "$DEVICE" --dtype "$DTYPE" --out "$W/vanilla" --json
  migmcut record --out "$W/store.zarr" --num 64 --batch-size 32 --steps 16 --device "$DEVICE" --dtype "$DTYPE" --json
  migmcut store info "$W/store.zarr"
  migmcut train --store "$W/store.zarr" --out "$W/shortcut" --max-steps 200 --device "$DEVICE" --json
  migmcut generate -p "a large red circle" -n 8 --steps 16 --method shortcut --shortcut "$W/shortcut" --budget 4 \
    --device "$DEVICE" --dtype "$DTYPE" --out "$W/shortcut-images" --json
  migmcut bench --shortcut "$W/shortcut" --steps 16 --budgets 4 --num-samples 64 --batch-size 16 --repeats 3 \
    --device "$DEVICE" --dtype "$DTYPE" --out "$W/bench-tiny" --json
  cp "$W/bench-tiny/bench.json" "$OUT/bench-tiny.json"
}

fullsize() {
  set -ex
  python benchmarks/gpu_fullsize.py --device "$DEVICE" --dtype "$DTYPE" --out "$W/fullsize" ${FULLSIZE_ARGS:-}
  cp "$W/fullsize/gpu_fullsize.json" "$OUT/"
}

for s in $stages; do
  case $s in
    cli) limit=150 ;;
    fullsize) limit=200 ;;
    *) echo "unknown stage $s (cli, fullsize)"; exit 2 ;;
  esac
  echo "=== $s (at most ${limit}s)"
  ( export -f "$s"; export W; timeout "$limit" bash -c "$s" ) > "$OUT/$s.log" 2>&1
  echo "=== $s exit $?"
  tail -n 5 "$OUT/$s.log"
done
rm -rf "$W"
