"""Does a fitted run's prediction move with the requested time? `python benchmarks/time_sweep.py RUN DATA TIME_KEY`.

Predicts at the observed times and at evenly spaced times between the first and the last, and prints the distance
(Euclidean, log-normalised means over the run's genes) of each prediction's mean to every observed time's mean.
A model whose output ignores the time gives the same row for every time (BENCHMARKS.md, the protocol section).
Options: --count-kind counts|lognorm (default: the run's), --n-cells N (150), --steps N (6).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from sctrace.data.io import read_timecourse
from sctrace.estimator import TRACE
from sctrace.harness.evaluate import lognorm_over_genes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("data")
    parser.add_argument("time_key")
    parser.add_argument("--count-kind", default=None)
    parser.add_argument("--n-cells", type=int, default=150)
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = TRACE.load(args.run)
    kind = args.count_kind or model.spec.count_kind
    timecourse = read_timecourse(args.data, args.time_key, count_kind=kind)
    genes = list(model.spec.genes)
    means = {}
    for t in timecourse.time_values:
        rows = np.flatnonzero(np.isclose(timecourse.times, t))
        means[t] = np.asarray(lognorm_over_genes(timecourse.expression()[rows], timecourse.gene_names(), genes, kind).mean(0)).ravel()
    print(f"training times {', '.join(f'{t:g}' for t in model.spec.time_values)}; distances to each observed time's mean")
    sweep = np.linspace(timecourse.time_values[0], timecourse.time_values[-1], args.steps)
    for t in sorted(set(np.round(np.concatenate([sweep, timecourse.time_values]), 6))):
        generated = model.predict(float(t), n_cells=args.n_cells, seed=0)
        predicted = np.asarray(lognorm_over_genes(generated.X, generated.var_names, genes, kind).mean(0)).ravel()
        row = "  ".join(f"{s:g}: {np.linalg.norm(predicted - m):6.2f}" for s, m in means.items())
        print(f"t = {t:6.2f} | {row}")


if __name__ == "__main__":
    main()
