"""Copy the study's small summaries into docs/results/ (per-run rows and the aggregated table)."""
import csv
from pathlib import Path
from sldistill.report import aggregate, markdown_table, read_run, write_summary_csv
root = Path("runs/study/sweep")
order = ["CE", "KD", "KD+sort", "DKD", "DKD+sort", "MLKD", "SLD", "SLD+sort"]
recs = []
for m in order:
    for d in sorted((root / m).glob("seed*")) if (root / m).is_dir() else []:
        if (d / "metrics.csv").is_file():
            r = read_run(d, method=m)
            if r.complete:
                recs.append(r)
with open("docs/results/fashion_mnist_runs.csv", "w", newline="") as f:
    w = csv.writer(f); w.writerow(["method", "seed", "best", "best_epoch", "last", "curve"])
    for r in recs:
        w.writerow([r.method, r.seed, f"{r.best:.2f}", r.best_epoch, f"{r.last:.2f}", " ".join(f"{a:.2f}" for a in r.test_acc)])
s = aggregate(recs, order=order)
write_summary_csv(s, "docs/results/fashion_mnist_summary.csv")
print(markdown_table(s))
