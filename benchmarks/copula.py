"""Sampling 'copula' against 'stratified' on finished benchmark runs: the same fitted models, only the draw differs.

For each seed's saved sctrace run of a ``sctrace benchmark`` directory, generates the held-out time's cells as the
benchmark did (same number of cells, same seed) once with ``sampling="stratified"`` and once with
``sampling="copula"``, and scores both on the held-out cells with every metric, including ``gene-gene r``. The
stratified rows reproduce the benchmark's sctrace row; runs fitted before the copula existed get one fitted from
the benchmark's training file (``work/train.h5ad``, the training cells only), as a fit would have made it.

Command (after the benchmarks of BENCHMARKS.md; seconds to minutes per directory, one core)::

    .venv/bin/python benchmarks/copula.py bench/lps_interp bench/klein_interp
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from _heldout_fit import data_missing

METRICS = ("mmd", "emd", "e_distance", "pearson_delta", "gene_corr")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", type=Path, nargs="+", help="output directories of `sctrace benchmark`")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)

    import torch

    from sctrace.data.io import read_timecourse
    from sctrace.estimator import TRACE
    from sctrace.harness.benchmark import benchmark_split
    from sctrace.harness.evaluate import genes_in_order, lognorm_over_genes
    from sctrace.harness.metrics import score
    from sctrace.model.sampling import GeneCopula

    torch.set_num_threads(args.threads)
    for run in args.runs:
        if data_missing(Path(json.loads((run / "results.json").read_text())["data"])):
            continue
        results, _, cells = benchmark_split(run)
        genes, holdout, count_kind = results["genes"], results["holdout"], results["count_kind"]
        train = read_timecourse(run / "work" / "train.h5ad", results["time_key"], count_kind=count_kind)
        rows: dict[str, list[dict]] = {"stratified": [], "copula": []}
        for seed in results["seeds"]:
            run_dir = run / "runs" / f"sctrace_seed{seed}"
            if not run_dir.exists():
                continue
            model = TRACE.load(run_dir)
            if model.copula is None:
                columns = genes_in_order(train.gene_names(), model.spec.genes)
                model.copula = GeneCopula.fit(train.expression()[:, columns], train.times, model.spec.time_values,
                                              model.spec.count_kind, seed=seed)
            for sampling in rows:
                generated = model.predict(holdout, n_cells=results["n_real"], seed=seed, sampling=sampling)
                values = lognorm_over_genes(generated.X, generated.var_names, genes, count_kind)
                rows[sampling].append(score(values, cells.real, reference=cells.reference, seed=seed))
        if not rows["copula"]:
            print(f"{run}: no sctrace runs")
            continue
        print(f"\n{run} ({results['task']} at {holdout:g}, seeds {', '.join(map(str, results['seeds']))})")
        print("| sampling | MMD | EMD | E-distance | Pearson-delta | gene-gene r | EMD per seed | gene-gene r per seed |")
        print("|---|---|---|---|---|---|---|---|")
        for sampling, runs in rows.items():
            means = " | ".join(f"{np.mean([r[m] for r in runs]):.4f}" for m in METRICS)
            emds = " / ".join(f"{r['emd']:.3f}" for r in runs)
            structure = " / ".join(f"{r['gene_corr']:.3f}" for r in runs)
            print(f"| {sampling} | {means} | {emds} | {structure} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
