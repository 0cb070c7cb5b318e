#!/usr/bin/env bash
# Compile a registered surrogate for every platform in surrogate_ops/presets/platforms.json.
# usage: bash deploy/build_all.sh [MODEL_URI] [OUT_DIR]
set -euo pipefail
model=${1:-models:/llvm-mca-haswell@champion}
out=${2:-$(dirname "$0")/builds}
platforms=$(python -c "from surrogate_ops.runtime import engines; print(' '.join(engines.platforms()))")
for platform in $platforms; do
  echo "== $platform"
  surrogate-ops compile --model "$model" --platform "$platform" --out "$out"
done
