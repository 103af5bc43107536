"""How a fitted run's training went, from its metrics.csv: `python benchmarks/learning_curve.py RUN_DIR [RUN_DIR ...]`.

Prints, at about a dozen validations, the step, the validation token and count losses and masked accuracy beside
the training masked accuracy of the nearest logged step, and the step of the best validation loss (the weights the
fit kept). A training accuracy near 1 with a validation token loss above ln(vocabulary) (a uniform guess) means
the token model memorised its training rows instead of learning what carries over to other cells.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path


def curve(run_dir: Path) -> None:
    logs = sorted((run_dir / "logs").glob("*/metrics.csv"))
    if not logs:
        print(f"{run_dir}: no logs/*/metrics.csv (not a fitted run directory)")
        return
    rows = list(csv.DictReader(logs[-1].open()))
    val = [r for r in rows if r.get("val_loss")]
    train = [r for r in rows if r.get("train_masked_accuracy")]
    spec = run_dir / "corpus" / "corpus.json"
    n_genes = len(json.loads(spec.read_text())["genes"]) if spec.exists() else None
    print(f"{run_dir}: {len(val)} validations" + (f"; uniform guess ln({n_genes}) = {math.log(n_genes):.2f}" if n_genes else ""))
    if not val:
        return

    def train_accuracy(step: int) -> str:
        if not train:
            return "-"
        nearest = min(train, key=lambda r: abs(int(r["step"]) - step))
        return f"{float(nearest['train_masked_accuracy']):.3f}"

    stride = max(1, len(val) // 12)
    picked = val[::stride] + ([val[-1]] if (len(val) - 1) % stride else [])
    print("step | val token loss | val count loss | val masked acc | train masked acc")
    for r in picked:
        step = int(r["step"])
        print(f"{step} | {float(r['val_token_loss']):.3f} | {float(r['val_count_loss']):.3f} | "
              f"{float(r['val_masked_accuracy']):.3f} | {train_accuracy(step)}")
    best = min(val, key=lambda r: float(r["val_loss"]))
    print(f"best validation loss {float(best['val_loss']):.3f} at step {best['step']}")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    for arg in sys.argv[1:]:
        curve(Path(arg))
