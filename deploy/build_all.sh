#!/usr/bin/env bash
# Compile a registered surrogate for every target in surrogate_ops/presets/targets.json.
# usage: bash deploy/build_all.sh [MODEL_URI] [OUT_DIR]
set -euo pipefail
model=${1:-models:/llvm-mca-haswell@champion}
out=${2:-$(dirname "$0")/builds}
targets=$(python -c "from surrogate_ops import presets; print(' '.join(k for k in presets.load('targets') if not k.startswith('_')))")
for target in $targets; do
  echo "== $target"
  surrogate-ops compile --model "$model" --target "$target" --out "$out"
done
