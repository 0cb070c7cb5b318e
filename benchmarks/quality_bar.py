"""Quality bar of trained surrogates on the BHive Haswell test split.

Train first (these are the commands behind the reported figures):

    surrogate-ops collect --bhive ../shared/data/bhive/hsw.csv --binary /usr/bin --binary /usr/lib/x86_64-linux-gnu \\
        --limit 130000 --mcpu haswell --out surrogate-ops-work/datasets/quality.parquet
    surrogate-ops collect --bhive ../shared/data/bhive/hsw.csv --out surrogate-ops-work/datasets/hsw.parquet
    surrogate-ops train --data surrogate-ops-work/datasets/quality.parquet --arch hier --preset small \\
        --epochs 30 --patience 5 --register qb-hier
    surrogate-ops train --data surrogate-ops-work/datasets/quality.parquet --arch bert --preset small \\
        --epochs 30 --patience 5 --max-minutes 40 --register qb-bert

then report:

    python benchmarks/quality_bar.py --model models:/qb-hier/1 --model models:/qb-bert/1

The split is a hash of the block text, so the BHive-only dataset's test blocks are exactly the
test blocks that training on the mixed dataset never saw.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import mlflow

from surrogate_ops import registry
from surrogate_ops.data import datasets
from surrogate_ops.registry import versions
from surrogate_ops.registry.evaluate import evaluate
from surrogate_ops.runtime.inference import Predictor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", action="append", required=True, help="models:/NAME/VERSION (repeatable)")
    parser.add_argument("--data", type=Path, default=Path("surrogate-ops-work/datasets/hsw.parquet"))
    args = parser.parse_args()
    frame = datasets.load(args.data)
    header = f"{'model':<22} {'arch':<8} {'params':>8} {'train s':>8} {'epochs':>6} {'MAPE mca':>9} {'tau mca':>8} {'MAPE meas':>10} {'tau meas':>9}"
    print(f"BHive test split of {args.data}: Haswell, may-alias blocks excluded from the measured figures")
    print(header)
    mca_line = None
    for uri in args.model:
        name, version = versions.resolve_version(uri)
        predictor = Predictor(registry.open(uri).model)
        m = evaluate(predictor, frame, "haswell", "test").metrics
        run = mlflow.get_run(mlflow.MlflowClient().get_model_version(name, version).run_id)
        print(f"{uri:<22} {predictor.meta['arch']:<8} {predictor.meta['parameters']:>8,} "
              f"{run.data.metrics.get('train_seconds', float('nan')):>8.0f} {int(run.data.metrics.get('epochs_run', 0)):>6} "
              f"{100 * m['mape_vs_mca']:>8.2f}% {m['tau_vs_mca']:>8.4f} {100 * m['mape_vs_measured']:>9.2f}% "
              f"{m['tau_vs_measured']:>9.4f}")
        mca_line = (m["measured_blocks"], m["mca_mape_vs_measured"], m["mca_tau_vs_measured"])
    if mca_line:
        print(f"llvm-mca itself vs measured on the same {int(mca_line[0]):,} blocks: MAPE {100 * mca_line[1]:.2f}%, "
              f"tau {mca_line[2]:.4f}")


if __name__ == "__main__":
    main()
