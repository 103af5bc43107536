"""What OT pairing (cpu-small's since 2026-11-29) adds to preparing a corpus, against random pairs (run on demand).

    .venv/bin/python benchmarks/pairing.py                          # 10,000, 50,000 and 100,000 cells, 1 and 2 threads
    .venv/bin/python benchmarks/pairing.py --cells 20000 --threads 1

For each size the built-in simulator draws a time course (1,200 genes, 6 time points, time 4 held out) and
``prepare_corpus`` builds cpu-small's corpus (1,000 HVGs, 64 tokens) twice, with ``pairing="random"`` and
``pairing="ot"``; the difference is what OT pairing costs a fit: a 30-PC PCA of the log-normalised training cells
plus the exact OT plans (POT's network simplex, blocks of ``OT_BLOCK`` rows). ``pair_cells`` alone is also timed on
the same number of cells with random 30-d coordinates, the solver without the PCA. Each timing is the fastest of
``--repeats`` (the machine is shared). Printed: seconds per step, the ratio ot / random, per thread count. The
thread count limits BLAS (threadpoolctl), which the PCA and the cost matrices use; POT's solver is single-threaded.
"""

from __future__ import annotations

import argparse

import numpy as np
from _timing import fastest

from sctrace._threads import set_threads
from sctrace.data.corpus import prepare_corpus
from sctrace.data.io import read_timecourse
from sctrace.data.pairing import pair_cells
from sctrace.data.simulate import simulate_timecourse

TIMES = (0.0, 1.0, 2.5, 4.0, 6.0, 8.5)
HOLDOUT = 4.0


def corpus_seconds(timecourse, repeats: int) -> tuple[float, float]:
    """(random s, ot s) for prepare_corpus with cpu-small's data settings."""

    def prepare(mode: str) -> None:
        prepare_corpus(timecourse, task="interpolate", holdout=HOLDOUT, n_top_genes=1000, max_len=64, pairing=mode)

    return fastest(lambda: prepare("random"), repeats), fastest(lambda: prepare("ot"), repeats)


def solver_seconds(cells: int, repeats: int) -> float:
    """pair_cells in mode ot on ``cells`` cells spread evenly over the training times, random 30-d coordinates."""
    rng = np.random.default_rng(0)
    train_times = [t for t in TIMES if t != HOLDOUT]
    times = rng.choice(train_times, size=cells)
    coordinates = rng.normal(size=(cells, 30))
    return fastest(lambda: pair_cells(times, train_times, mode="ot", coordinates=coordinates, seed=0), repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=int, nargs="+", default=[10_000, 50_000, 100_000])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    print("| cells | threads | prepare, random s | prepare, ot s | ratio | pair_cells ot alone s |")
    print("|---|---|---|---|---|---|")
    for cells in args.cells:
        timecourse = read_timecourse(simulate_timecourse(n_cells=cells, times=TIMES, seed=0), "time")
        for threads in args.threads:
            set_threads(threads, torch_too=False)
            random_s, ot_s = corpus_seconds(timecourse, args.repeats)
            solver_s = solver_seconds(cells, args.repeats)
            print(f"| {cells:,} | {threads} | {random_s:.1f} | {ot_s:.1f} | {ot_s / random_s:.1f} | {solver_s:.1f} |",
                  flush=True)


if __name__ == "__main__":
    main()
