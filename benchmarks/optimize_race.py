"""Surrogate optimization vs surrogate-free search baselines on measured Haswell throughput, same budget.

For each seed, `surrogate_ops.search.optimize.optimize` finds a setting of llvm-mca's parameters through
the conditioned surrogate and with OpenTuner and Optuna (the seed moves the baselines, the descent's
random starts and the sample of training blocks every llvm-mca run of the search takes), and the
real llvm-mca scores every setting on the same held-out measured blocks (may-alias excluded).
Prints a markdown table: held-out MAPE and Kendall's tau per method and seed, the mean, and how
often each method beat the expert defaults. The surrogate itself is trained once (see README:
collect --sample-params, train --init-from); its training data is charged to every seed's budget.

    python benchmarks/optimize_race.py --model models:/llvm-mca-haswell-params@champion --budget 40000 --checks 9
"""

from __future__ import annotations

import argparse
import statistics

from common import DEFAULT_BHIVE

from surrogate_ops.search.optimize import OptimizeConfig, optimize


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a parameter-conditioned surrogate (URI or directory)")
    parser.add_argument("--data", default=str(DEFAULT_BHIVE / "hsw.csv"))
    parser.add_argument("--budget", type=int, default=40000)
    parser.add_argument("--checks", type=int, default=9)
    parser.add_argument("--search-blocks", type=int, default=1000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()

    rows: dict[str, list[tuple[float, float, int]]] = {}
    for seed in args.seeds:
        config = OptimizeConfig(model=args.model, data=args.data, budget=args.budget, checks=args.checks,
                                search_blocks=args.search_blocks, seed=seed)
        result = optimize(config, progress=False)
        for name, o in result.outcomes.items():
            rows.setdefault(name, []).append((o.test_mape, o.test_tau, o.evaluations))
        print(f"seed {seed}: " + ", ".join(f"{n} {100 * o.test_mape:.2f}%" for n, o in result.outcomes.items())
              + f" (run {result.run_id}, {result.test_blocks:,} held-out blocks)", flush=True)

    defaults = [m for m, _, _ in rows["defaults"]]
    print(f"\nbudget {args.budget:,} llvm-mca block evaluations per method; held-out llvm-mca MAPE vs measured\n")
    print("| method | " + " | ".join(f"seed {s}" for s in args.seeds) + " | mean | tau (mean) | beat defaults |")
    print("|---" * (len(args.seeds) + 4) + "|")
    for name, values in rows.items():
        mapes = [m for m, _, _ in values]
        wins = sum(m < d for m, d in zip(mapes, defaults, strict=True))
        print(f"| {name} | " + " | ".join(f"{100 * m:.2f}%" for m in mapes)
              + f" | {100 * statistics.mean(mapes):.2f}% | {statistics.mean(t for _, t, _ in values):.4f} | "
              + ("-" if name == "defaults" else f"{wins}/{len(mapes)}") + " |")


if __name__ == "__main__":
    main()
