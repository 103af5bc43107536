"""Padding of training batches, shuffled as usual vs length-grouped (run on demand; seconds).

    .venv/bin/python benchmarks/padding.py
    .venv/bin/python benchmarks/padding.py --batch-size 32 --max-len 128

For the built-in simulated time course and, where present, the real data sets in ``../shared/data``: the share
of gene positions in collated batches that are padding (``sctrace.data.datamodule.padding_fraction``) for
one epoch of shuffled batches, one epoch of ``LengthGroupedSampler`` batches, and the floor that no batching
of pair rows can beat (one row per batch: the cells of a row, at different time points, differ in length).
Also printed: the padding if each time point of a batch had its own width (``per_time_padding``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from sctrace.data.corpus import prepare_corpus
from sctrace.data.datamodule import LengthGroupedSampler, padding_fraction, row_widths
from sctrace.data.io import read_timecourse
from sctrace.data.simulate import simulate_timecourse

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
REAL = {"klein2015_mesc.h5ad": "time_days"}


def epoch_batches(order: list[int] | np.ndarray, batch_size: int) -> list[np.ndarray]:
    order = np.asarray(order)
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def per_time_padding(corpus, batches: list[np.ndarray]) -> float:
    """Padding if each time point of a batch were padded only to its own longest sentence (not what the
    collator does today: one width for the whole batch), to size what trimming per time point would save."""
    real = padded = 0
    for rows in batches:
        lengths = corpus.lengths[corpus.pairs[rows]]  # (batch, n_times)
        real += int(lengths.sum())
        padded += len(rows) * int(np.maximum(lengths.max(axis=0), 1).sum())
    return 1.0 - real / padded


def report(name: str, corpus, batch_size: int, seed: int) -> None:
    rows = np.arange(len(corpus.pairs))
    shuffled = epoch_batches(np.random.default_rng(seed).permutation(rows), batch_size)
    grouped = epoch_batches(list(LengthGroupedSampler(row_widths(corpus, rows), batch_size, seed)), batch_size)
    floor = padding_fraction(corpus, [[row] for row in rows])
    lengths = corpus.lengths[corpus.pairs]
    print(
        f"{name}: {len(rows)} pair rows x {corpus.pairs.shape[1]} cells, sentence length {lengths.min()}-{lengths.max()} "
        f"(mean {lengths.mean():.0f}), batch {batch_size}: padding shuffled {100 * padding_fraction(corpus, shuffled):.1f}%, "
        f"length-grouped {100 * padding_fraction(corpus, grouped):.1f}%, floor (one row per batch) {100 * floor:.1f}% | "
        f"with one width per time point: shuffled {100 * per_time_padding(corpus, shuffled):.1f}%, "
        f"length-grouped {100 * per_time_padding(corpus, grouped):.1f}%",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-len", type=int, default=270, help="eb preset: 270")
    parser.add_argument("--n-top-genes", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    settings = dict(task="none", holdout=None, n_top_genes=args.n_top_genes, max_len=args.max_len, seed=args.seed)

    simulated = simulate_timecourse(n_cells=5000, n_genes=3000, seed=args.seed)
    report("simulated (5,000 cells x 3,000 genes)", prepare_corpus(read_timecourse(simulated, "time"), **settings), args.batch_size, args.seed)
    for file, time_key in REAL.items():
        path = SHARED_DATA / file
        if path.exists():
            corpus = prepare_corpus(read_timecourse(path, time_key), **settings)
            report(file, corpus, args.batch_size, args.seed)
        else:
            print(f"{file}: absent ({path})")


if __name__ == "__main__":
    main()
