"""How much of sctrace's per-gene EMD at a held-out time is sequencing depth, not biology?

Per-gene EMD is scored on log-normalised counts, and at a given expression level a shallower cell has more
zeros and larger non-zero values (a count of 1 at depth 2,500 is log1p(4), at depth 5,000 log1p(2)). Depth is
technical: a held-out sample's cannot be inferred from its neighbours, and sctrace draws each generated cell's
depth from the neighbouring observed times (``CorpusSpec.sample_library_sizes``). This script fits sctrace
once per seed (the held-out time removed first) and scores, with the benchmark's metric code, the same model's
cells generated at three depths:

- ``neighbours``: the default rule, what ``sctrace benchmark`` reports;
- ``previous``: the previous observed time's depths, the ones the ``identity`` baseline's cells carry;
- ``held-out (diagnostic)``: depths drawn from the held-out cells themselves. This reads the held-out cells
  before scoring, which sctrace never does; it is the leak of the authors' code (Perturbgen), shown here only
  to measure how much of the gap to ``identity`` depth accounts for. Never a result.

It also prints each time point's depth and zero fraction.

Command (Klein 2015, day 4 held out, 3 seeds, about 6 min on one core)::

    .venv/bin/python benchmarks/depth.py ../shared/data/klein2015_mesc.h5ad --time-key time_days --holdout 4

Results: BENCHMARKS.md, section "Sequencing depth at the held-out time".
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data", type=Path, help=".h5ad with raw counts")
    parser.add_argument("--time-key", default="time")
    parser.add_argument("--holdout", type=float, required=True, help="time point to hold out and predict")
    parser.add_argument("--task", default="interpolate", choices=("interpolate", "extrapolate"))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--preset", default="cpu-small")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    if not args.data.exists():
        print(f"skipped: {args.data} is not here (the real data sets live in ../shared/data/).")
        return 0

    import anndata as ad
    import scipy.sparse as sp
    import torch

    from sctrace.estimator import TRACE
    from sctrace.harness.evaluate import lognorm_over_genes, scoring_cells
    from sctrace.harness.metrics import emd, pearson_delta

    torch.set_num_threads(args.threads)
    adata = ad.read_h5ad(args.data)
    times = adata.obs[args.time_key].to_numpy(dtype=np.float64)
    depth = np.asarray(adata.X.sum(1)).ravel()
    print("time  cells  mean depth  median depth  zero fraction (all genes)")
    for value in np.unique(times):
        rows = np.isclose(times, value)
        block = sp.csr_matrix(adata.X[rows])
        block.eliminate_zeros()
        zeros = 1.0 - block.nnz / (block.shape[0] * block.shape[1])
        print(f"{value:4g}  {rows.sum():5d}  {depth[rows].mean():10.0f}  {np.median(depth[rows]):12.0f}  {zeros:.3f}")

    rows = {}
    for seed in (int(s) for s in args.seeds.split(",")):
        with tempfile.TemporaryDirectory() as run_dir:
            model = TRACE(adata, args.time_key, task=args.task, holdout=args.holdout, preset=args.preset, seed=seed)
            model.fit(run_dir=Path(run_dir) / "run", progress=False)
        genes = model.spec.genes
        cells = scoring_cells(adata.X, times, adata.var_names, genes, args.holdout,
                              observed_times=model.spec.time_values)
        n_cells = cells.real.shape[0]
        depth_over_genes = np.asarray(adata.X[:, adata.var_names.get_indexer(genes)].sum(1)).ravel()
        depths = {
            "neighbours (default)": None,
            "previous observed time": depth_over_genes[np.isclose(times, cells.reference_time)],
            "held-out cells (diagnostic, a leak)": depth_over_genes[cells.real_rows],
        }
        rows.setdefault("identity", []).append((emd(cells.reference.toarray(), cells.real.toarray()), np.nan))
        for label, values in depths.items():
            generated = model.predict(args.holdout, n_cells=n_cells, seed=seed, library_size=values)
            expression = lognorm_over_genes(generated.X, generated.var_names, genes).toarray()
            rows.setdefault(f"sctrace, depth: {label}", []).append(score(cells, expression, emd, pearson_delta))
        print(f"seed {seed}: " + "; ".join(f"{k} EMD {v[-1][0]:.4f}" for k, v in rows.items()), flush=True)
        # identity is a set of real cells: it has no Pearson-delta against its own time (a zero change).

    print(f"\n{args.data.name}, {args.holdout:g} held out, seeds {args.seeds}, preset {args.preset}\n")
    print("| cells | EMD per seed | EMD | Pearson-delta |")
    print("|---|---|---|---|")
    for label, values in rows.items():
        values = np.asarray(values)
        per_seed = " / ".join(f"{v:.3f}" for v in values[:, 0])
        print(f"| {label} | {per_seed} | {values[:, 0].mean():.3f} ± {values[:, 0].std(ddof=1) if len(values) > 1 else 0:.3f} "
              f"| {'-' if np.isnan(values[:, 1]).all() else format(values[:, 1].mean(), '.3f')} |")
    return 0


def score(cells, expression: np.ndarray, emd, pearson_delta) -> tuple[float, float]:
    real = cells.real.toarray()
    delta = pearson_delta(expression, real, cells.reference.toarray()) if cells.reference is not None else np.nan
    return emd(expression, real), delta


if __name__ == "__main__":
    sys.exit(main())
