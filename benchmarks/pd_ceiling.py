"""What Pearson-delta can reach on one benchmark split, and how much of a method's shortfall is sampling noise.

Pearson-delta correlates a prediction's mean change from the reference time with the real one. Two things cap it
for a method that sees only the training times: the real held-out change may hold a part that no combination of
the observed time points' means carries (a transient response), and a prediction of ``n_real`` sampled cells has
a noisy mean. This script reads a finished ``sctrace benchmark --task interpolate`` directory and prints:

- real half vs half: Pearson-delta between two random halves of the held-out cells (20 splits), what
  a perfect generator would score against half the cells;
- neighbour mean mixture: the two neighbouring training times' mean expression mixed in proportion to distance
  (the expected mean of ``mixture`` and of ``linear`` before PCA): the ceiling of any prediction whose mean
  change is proportional to the neighbours'; also the polynomial through every training time's mean;
- per method and seed, the scores of the saved predictions;
- sctrace per seed (its saved run reloaded): Pearson-delta of the expected value of its generated cells
  (``layers['<likelihood>_mean']``, no sampling noise; log-normalised data only), and of 10 times as many
  sampled cells.

The held-out cells are read only to score, as in the benchmark. Command (after the LPS interpolation benchmark
of BENCHMARKS.md, with OUT its output directory; about 1 min)::

    .venv/bin/python benchmarks/pd_ceiling.py OUT ../shared/data/shalek2014_mdc_lps.h5ad
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from _heldout_fit import data_missing


def polynomial_mean(means: dict[float, np.ndarray], at: float) -> np.ndarray:
    """Lagrange polynomial through every training time's mean expression, evaluated at ``at``."""
    points = sorted(means)
    out = np.zeros_like(means[points[0]])
    for i, ti in enumerate(points):
        weight = np.prod([(at - tj) / (ti - tj) for j, tj in enumerate(points) if j != i])
        out = out + weight * means[ti]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path, help="output directory of `sctrace benchmark --task interpolate`")
    parser.add_argument("data", type=Path, help="the .h5ad the benchmark ran on")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    if data_missing(args.data):
        return 0

    import anndata as ad
    import torch

    from sctrace.estimator import TRACE
    from sctrace.harness.evaluate import lognorm_over_genes, scoring_cells
    from sctrace.harness.metrics import pearson_delta

    torch.set_num_threads(args.threads)
    results = json.loads((args.run / "results.json").read_text())
    if results["task"] != "interpolate":
        raise SystemExit(f"{args.run} is a --task {results['task']} run; this script reads --task interpolate runs.")
    genes, holdout, count_kind = results["genes"], results["holdout"], results["count_kind"]
    train_times = sorted(results["train_times"])
    adata = ad.read_h5ad(args.data)
    times = adata.obs[results["time_key"]].to_numpy(dtype=np.float64)
    # The cells the benchmark scored, and its reference time, by the benchmark's own rule.
    cells = scoring_cells(adata.X, times, adata.var_names, genes, holdout, count_kind, observed_times=train_times)
    real, ref_cells, reference = cells.real.toarray(), cells.reference.toarray(), cells.reference_time
    values = lognorm_over_genes(adata.X, adata.var_names, genes, count_kind).toarray()
    means = {t: values[np.isclose(times, t)].mean(0) for t in train_times}

    def score(pred: np.ndarray) -> float:
        return pearson_delta(pred, real, ref_cells)

    rng = np.random.default_rng(0)
    halves = []
    for _ in range(20):
        order = rng.permutation(len(real))
        halves.append(pearson_delta(real[order[: len(real) // 2]], real[order[len(real) // 2:]], ref_cells))
    later = min(t for t in train_times if t > holdout)
    weight = (holdout - reference) / (later - reference)
    print(f"{args.data.name}, {holdout:g} held out ({len(real)} cells), reference {reference:g}, {len(genes)} genes")
    print("| prediction | Pearson-delta |")
    print("|---|---|")
    print(f"| real half vs half (20 splits) | {np.mean(halves):.3f} ± {np.std(halves, ddof=1):.3f} |")
    print(f"| neighbour mean mixture ({weight:.2f} of {later:g}) | {score(((1 - weight) * means[reference] + weight * means[later])[None]):.3f} |")
    print(f"| polynomial through the means at {', '.join(f'{t:g}' for t in train_times)} | "
          f"{score(polynomial_mean(means, holdout)[None]):.3f} |")
    for method in results["methods"]:
        if method == "identity":  # copies the reference time: no change, Pearson-delta undefined
            continue
        seeds = [score(np.load(path)["expression"]) for path in
                 sorted((args.run / "work" / "predictions").glob(f"{method}_seed*.npz"))]
        if seeds:
            print(f"| {method}, saved predictions, per seed | {' / '.join(f'{s:.3f}' for s in seeds)} |")
    for seed in results["seeds"]:
        run_dir = args.run / "runs" / f"sctrace_seed{seed}"
        if not run_dir.exists():
            continue
        model = TRACE.load(run_dir)
        for factor in (1, 10):
            generated = model.predict(holdout, n_cells=factor * len(real), seed=seed)
            drawn = lognorm_over_genes(generated.X, generated.var_names, genes, count_kind).toarray()
            line = f"| sctrace seed {seed}, {factor * len(real)} cells: sampled | {score(drawn):.3f} |"
            layer = f"{model.config.counts.likelihood}_mean"
            if factor == 1 and count_kind == "lognorm" and layer in generated.layers:
                expected = lognorm_over_genes(generated.layers[layer], generated.var_names, genes, count_kind)
                line += f"\n| sctrace seed {seed}: expected value of the same cells | {score(expected.toarray()):.3f} |"
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
