#!/bin/bash
# Issue 35's GPU figures in one device call (not a test; prepared for a session lent a GPU machine).
# That machine has torch but not MLflow: carry MLflow's wheels and a dataset from here, in ignored
# folders of the checkout, and name both in the call's `carry`:
#   echo /.whl/ >> .git/info/exclude; echo /.dev/ >> .git/info/exclude
#   python3 -m pip download --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 \
#       --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl mlflow==3.17.2
#   (then delete the wheels the machine already has: numpy, pandas, pyarrow, scipy, scikit-learn, matplotlib, ...)
#   surrogate-ops collect --bhive ../shared/data/bhive/hsw.csv --mcpu haswell --out .dev/hsw.parquet
# and run:  bash benchmarks/gpu_train.sh 2>&1 | tee $OUT/log   (carry: .whl, .dev; about 6 minutes)
# It times the training loop with host-padded and device-held batches (fp32, and bf16 at large
# batches), then trains the bundled network shape from scratch on the GPU for $MINUTES minutes and
# writes its per-epoch validation MAPE to $OUT/gpu_train.json, to set against the same command on
# the CPU (`surrogate-ops train --data hsw.parquet --preset tiny --target mca --mcpu haswell`).
cd "$(dirname "$0")/.."
T0=$(date +%s)
[ -n "$LOCAL" ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 3
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
D=${DEV:-cuda}
DATA=${DATA:-.dev/hsw.parquet}
timeout 120 python3 benchmarks/train_throughput.py --data $DATA --device $D --batch 64 --batch 512 --batch 4096 \
  --batch 16384 --blocks 40000 --repeats 2 > $OUT/throughput.jsonl 2> $OUT/throughput.err
timeout 40 python3 benchmarks/train_throughput.py --data $DATA --device $D --batches device --precision bf16 \
  --batch 4096 --batch 16384 --blocks 40000 --repeats 2 >> $OUT/throughput.jsonl 2>> $OUT/throughput.err
cat $OUT/throughput.jsonl; tail -3 $OUT/throughput.err
echo "throughput done at $(( $(date +%s) - T0 )) s"
SURROGATE_OPS_HOME=/tmp/g timeout 700 python3 -m surrogate_ops train --data $DATA --arch dep --preset tiny --target mca \
  --mcpu haswell --device $D --batch-size 1024 --lr 4e-3 --epochs 400 --patience 25 --max-minutes ${MINUTES:-3} \
  --quiet > $OUT/train.log 2>&1
tail -5 $OUT/train.log
python3 - <<'PY' > $OUT/gpu_train.json
import glob, json, torch
state = torch.load(glob.glob("/tmp/g/checkpoints/*/last.pt")[0], map_location="cpu", weights_only=False)
print(json.dumps({"history": state["loop"]["history"], "best_val": state["loop"]["best_val"]}))
PY
echo "all done at $(( $(date +%s) - T0 )) s"
