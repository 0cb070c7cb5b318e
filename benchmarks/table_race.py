"""Surrogate optimization of llvm-mca's per-instruction table vs OpenTuner and Optuna, same budget, seeds.

For each seed, `surrogate_ops.search.table_search.search` (what `surrogate-ops optimize-table` runs)
fine-tunes the per-instruction surrogate, descends on the table, checks tables from along the
path with the parametric llvm-mca, gives OpenTuner and Optuna the surrogate's whole budget of
driver block evaluations (its labels, anchors and checks), and scores every table with the real
driver on the held-out measured blocks (may-alias excluded). Prints a markdown table: held-out
MAPE, Kendall's tau and MAPE on test blocks with an opcode rare in training, per method and seed.
The labels come from `collect --sample-params N --per-instruction MODE --split train`.

    python benchmarks/table_race.py --mcpu haswell --data ../shared/data/bhive/hsw.csv \\
        --labels centred-s1.parquet centred-s2.parquet wide-s3.parquet
"""

from __future__ import annotations

import argparse
import statistics

from common import DEFAULT_BHIVE

from surrogate_ops.search.table_search import TableSearchConfig, search


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mcpu", default="haswell")
    parser.add_argument("--data", default=str(DEFAULT_BHIVE / "hsw.csv"))
    parser.add_argument("--labels", nargs="+", required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--baselines", nargs="*", default=["opentuner", "optuna"])
    args = parser.parse_args()

    rows: dict[str, list[tuple[float, float, float, int]]] = {}
    for seed in args.seeds:
        config = TableSearchConfig(data=args.data, labels=tuple(args.labels), mcpu=args.mcpu, seed=seed,
                                   baselines=tuple(args.baselines))
        result = search(config, progress=False, register=False)
        for name, o in result.outcomes.items():
            rows.setdefault(name, []).append((o.test_mape, o.test_tau, result.rare[name], o.evaluations))
        print(f"seed {seed}: " + ", ".join(f"{n} {100 * o.test_mape:.2f}%" for n, o in result.outcomes.items())
              + f" (run {result.run_id}; {len(result.space.opcodes)} opcodes, {result.space.size} values)", flush=True)

    print(f"\nheld-out llvm-mca MAPE vs measured, -mcpu={args.mcpu}, may-alias excluded\n")
    print("| method | " + " | ".join(f"seed {s}" for s in args.seeds)
          + " | mean | tau (mean) | rare-opcode blocks (mean) | evaluations |")
    print("|---" * (len(args.seeds) + 5) + "|")
    for name, values in rows.items():
        print(f"| {name} | " + " | ".join(f"{100 * m:.2f}%" for m, _, _, _ in values)
              + f" | {100 * statistics.mean(m for m, _, _, _ in values):.2f}%"
              + f" | {statistics.mean(t for _, t, _, _ in values):.4f}"
              + f" | {100 * statistics.mean(r for _, _, r, _ in values):.2f}%"
              + f" | {values[0][3]:,} |")


if __name__ == "__main__":
    main()
