"""Does the token model predict the sentences of cells it never trained on better than gene frequencies do?

`python benchmarks/heldout_tokens.py RUN_DIR [RUN_DIR ...] [--json OUT]`, each a fitted run (`sctrace fit`, or a
protocol split's `sctrace/runs/sctrace_seed0`) whose corpus held validation cells aside (`validation_rows` in
`corpus/corpus.json`). For each run, the validation cells' masked-token loss and accuracy (from `logs/*/metrics.csv`:
first validation, best, and at the checkpoint kept, the one with the lowest count loss) beside two guesses that
read no cell: the uniform one, ln(genes), and each target time's gene frequencies in the training cells'
sentences (cross-entropy of the validation cells' tokens under them, and the accuracy of always naming the most
frequent gene). A mask picks gene positions uniformly, so the masked loss and the frequency guess's cross-entropy
estimate the same quantity.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from sctrace.data.corpus_types import Corpus  # noqa: E402
from sctrace.data.tokenize import N_SPECIAL  # noqa: E402


def frequency_guess(corpus: Corpus) -> dict[str, float]:
    """Cross-entropy and accuracy on the validation cells' later-time tokens of the training cells' frequencies."""
    n_val = corpus.spec.validation_rows
    if not n_val:
        raise SystemExit("this run's corpus holds no validation cells aside (a run before validation_rows)")
    pairs, tokens, lengths = corpus.pairs, np.asarray(corpus.tokens[:]), np.asarray(corpus.lengths)
    vocab = corpus.spec.vocab_size
    def genes(cells: np.ndarray) -> np.ndarray:
        return np.concatenate([tokens[c, : lengths[c]] for c in cells]).astype(np.int64)

    losses, hits, n = 0.0, 0.0, 0
    for k in range(1, pairs.shape[1]):  # the targets: every time after the source
        train_cells, val_cells = np.unique(pairs[:-n_val, k]), np.unique(pairs[-n_val:, k])
        counts = np.bincount(genes(train_cells), minlength=vocab)[N_SPECIAL:] + 0.5  # add-half smoothing
        p = counts / counts.sum()
        seen = genes(val_cells) - N_SPECIAL
        losses += float(-np.log(p[seen]).sum())
        hits += float((seen == p.argmax()).sum())
        n += len(seen)
    return {"frequency_loss": losses / n, "frequency_accuracy": hits / n, "uniform_loss": float(np.log(corpus.spec.n_genes))}


def report(run: Path) -> dict:
    corpus = Corpus.load(run / "corpus")
    metrics = pd.concat([pd.read_csv(p) for p in sorted((run / "logs").glob("*/metrics.csv"))])
    val = metrics.dropna(subset=["val_count_loss"]).reset_index(drop=True)
    kept = int(val["val_count_loss"].idxmin())
    return {
        "run": str(run),
        "validations": len(val),
        "token_loss_first": float(val["val_token_loss"].iloc[0]),
        "token_loss_best": float(val["val_token_loss"].min()),
        "token_loss_kept": float(val["val_token_loss"].iloc[kept]),
        "accuracy_best": float(val["val_masked_accuracy"].max()),
        "accuracy_kept": float(val["val_masked_accuracy"].iloc[kept]),
        "kept_step": int(val["step"].iloc[kept]),
        **frequency_guess(corpus),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--json", type=Path, help="write the rows here as well")
    args = parser.parse_args(argv)
    rows = [report(run) for run in args.runs]
    print("| run | token loss first / best / kept | accuracy best / kept | frequency guess loss / accuracy | ln(genes) |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['run']} | {r['token_loss_first']:.3f} / {r['token_loss_best']:.3f} / {r['token_loss_kept']:.3f} | "
              f"{r['accuracy_best']:.4f} / {r['accuracy_kept']:.4f} | {r['frequency_loss']:.3f} / "
              f"{r['frequency_accuracy']:.4f} | {r['uniform_loss']:.3f} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
