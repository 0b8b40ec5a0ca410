"""Copy the study's small summaries into docs/results/ (per-run rows and the aggregated table).

Reads the runs of `docs/results/fashion_mnist_study.sh` under runs/study/sweep/<method>/seed*;
refuses to run (exit 2, nothing written) unless every method of the study has finished runs,
so the committed CSV files are never replaced by an empty or partial table.
"""
import csv
import sys
from pathlib import Path

from sldistill.report import aggregate, markdown_table, read_run, write_summary_csv

ROOT = Path("runs/study/sweep")
ORDER = ["CE", "KD", "KD+sort", "DKD", "DKD+sort", "MLKD", "SLD", "SLD+sort"]


def main() -> int:
    recs = []
    for m in ORDER:
        for d in sorted((ROOT / m).glob("seed*")) if (ROOT / m).is_dir() else []:
            if (d / "metrics.csv").is_file():
                r = read_run(d, method=m)
                if r.complete:
                    recs.append(r)
    missing = [m for m in ORDER if not any(r.method == m for r in recs)]
    if missing:
        print(f"collect_fashion_mnist: no finished runs under {ROOT} for {', '.join(missing)}; run "
              "docs/results/fashion_mnist_study.sh first (nothing written)", file=sys.stderr)
        return 2
    with open("docs/results/fashion_mnist_runs.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["method", "seed", "best", "best_epoch", "last", "curve"])
        for r in recs:
            w.writerow([r.method, r.seed, f"{r.best:.2f}", r.best_epoch, f"{r.last:.2f}",
                        " ".join(f"{a:.2f}" for a in r.test_acc)])
    s = aggregate(recs, order=ORDER)
    write_summary_csv(s, "docs/results/fashion_mnist_summary.csv")
    print(markdown_table(s))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
