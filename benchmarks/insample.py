"""Does a fitted protocol run reproduce its *trained* times? `python benchmarks/insample.py SPLIT_DIR DATA TIME_KEY`.

SPLIT_DIR is one split of `sctrace protocol` (OUT/splits/<task>-<t>); its sctrace run (seed 0) predicts 300
cells at every observed time after the source, and each prediction is scored (per-gene EMD, Pearson-delta
against the previous time) on that time's real cells, next to `identity` (the previous time's real cells), with
where the EMD comes from: the mean absolute error of each gene's mean, the non-zero fraction and the spread
across cells, each beside the real cells'. At a
trained time this is in-sample: a model that cannot match it there cannot move between its neighbours either.
Options: --count-kind counts|lognorm (default: the split's).
"""

from __future__ import annotations

import argparse
import json
import warnings

import anndata as ad
import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("split_dir")
    parser.add_argument("data")
    parser.add_argument("time_key")
    parser.add_argument("--count-kind", default=None)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    from sctrace import TRACE
    from sctrace.harness.evaluate import lognorm_over_genes, scoring_cells
    from sctrace.harness.metrics import emd, pearson_delta

    results = json.loads(open(f"{args.split_dir}/sctrace/results.json").read())
    genes, kind = results["genes"], args.count_kind or results["count_kind"]
    kind = "lognorm" if kind == "values" else kind
    full = ad.read_h5ad(args.data)
    if results["count_kind"] == "values":
        full.X = np.log1p(full.X)
    times = full.obs[args.time_key].astype(float).to_numpy()
    model = TRACE.load(f"{args.split_dir}/sctrace/runs/sctrace_seed0")
    for t in sorted(np.unique(times))[1:]:
        pred = model.predict(float(t), n_cells=300, seed=0)
        cells = scoring_cells(full.X, times, full.var_names, genes, float(t), kind)
        generated = lognorm_over_genes(pred.X, pred.var_names, genes, "counts" if kind == "counts" else "lognorm")
        role = "held out" if np.isclose(t, results["holdout"]) else "trained"
        gen, real = _dense(generated), _dense(cells.real)
        # Where the EMD comes from: each gene's mean, its spread across cells, how many cells express it.
        print(f"t = {t:g} ({role}): sctrace EMD {emd(gen, real):.3f}, Pearson-delta "
              f"{pearson_delta(gen, real, cells.reference):.3f}; identity EMD {emd(cells.reference, real):.3f}; "
              f"|mean error| {np.abs(gen.mean(0) - real.mean(0)).mean():.3f}; non-zero fraction "
              f"{(gen > 0).mean():.3f} (real {(real > 0).mean():.3f}); sd across cells {gen.std(0).mean():.3f} "
              f"(real {real.std(0).mean():.3f})")


def _dense(matrix) -> np.ndarray:
    return matrix.toarray() if hasattr(matrix, "toarray") else np.asarray(matrix)


if __name__ == "__main__":
    main()
