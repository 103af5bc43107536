"""The README's main job: simulate, fit an interpolation model, predict the held-out time, score it."""

from __future__ import annotations

import json
import resource
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from sctrace.data.preprocess import log_normalize
from sctrace.data.simulate import simulate_timecourse
from sctrace.estimator import TRACE
from sctrace.harness.baselines import identity_baseline, linear_baseline, mixture_baseline
from sctrace.harness.evaluate import lognorm_over_genes, scoring_cells
from sctrace.harness.metrics import score
from sctrace.harness.report import markdown_table

DEMO_COLUMNS = ["emd", "mmd", "pearson", "pearson_delta", "e_distance", "gene_corr"]


def run_demo(out_dir: str | Path, seed: int = 0, max_epochs: int | None = None, echo: Callable[[str], None] = print) -> dict:
    """Run the demo end to end and write ``metrics.json``, ``results.md`` and ``pca.png`` to ``out_dir``."""
    from sctrace.harness.plots import pca_overlay

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    adata = simulate_timecourse(seed=seed)
    values = sorted(float(v) for v in adata.obs["time"].unique())
    holdout = float(values[len(values) // 2])
    echo(f"simulated {adata.n_obs} cells x {adata.n_vars} genes at times {', '.join(f'{v:g}' for v in values)}; holding out {holdout:g}")

    model = TRACE(adata, "time", task="interpolate", holdout=holdout, seed=seed)
    echo(repr(model))
    model.fit(max_epochs=max_epochs, run_dir=out_dir / "run", overwrite=True, progress=False)
    fit_seconds = time.perf_counter() - started

    times = adata.obs["time"].to_numpy(dtype=float)
    # Scored only now, after fitting: every method over the model's genes, normalised over those genes.
    cells = scoring_cells(adata.X, times, adata.var_names, model.spec.genes, holdout, observed_times=model.spec.time_values)
    real, reference = cells.real, cells.reference
    lognorm_all = lognorm_over_genes(adata.X, adata.var_names, model.spec.genes)
    n_real = real.shape[0]
    generated = model.predict(holdout, n_cells=n_real, seed=seed)
    predicted = log_normalize(generated.X)

    train_mask = ~np.isclose(times, holdout)
    train_expr, train_times = lognorm_all[train_mask], times[train_mask]
    methods = {
        "sctrace": predicted,
        "identity": identity_baseline(train_expr, train_times, holdout, n_cells=n_real, seed=seed),
        "mixture": mixture_baseline(train_expr, train_times, holdout, n_cells=n_real, seed=seed),
        "linear": linear_baseline(train_expr, train_times, holdout, n_cells=n_real, seed=seed),
    }
    results = {name: score(pred, real, reference=reference, seed=seed) for name, pred in methods.items()}
    total_seconds = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    table = markdown_table(results, DEMO_COLUMNS)
    legend = ("EMD, MMD, E-distance: lower is better; Pearson, Pearson-delta, gene_corr (how alike generated and real "
              "cells' gene-gene correlations are): higher is better.")
    echo(f"\nheld-out time {holdout:g}: {n_real} real cells vs {n_real} generated per method\n{table}\n{legend}")
    echo(f"wall time {total_seconds:.0f} s (fit {fit_seconds:.0f} s), peak memory {peak_mb:.0f} MB")
    (out_dir / "results.md").write_text(f"{table}\n\n{legend}\n")
    summary = {"holdout": holdout, "metrics": results, "wall_seconds": total_seconds, "peak_rss_mb": peak_mb}
    (out_dir / "metrics.json").write_text(json.dumps(summary, indent=1, default=float))
    pca_overlay(real, methods, out_dir / "pca.png", title=f"held-out time {holdout:g}")
    echo(f"wrote {out_dir / 'results.md'}, {out_dir / 'metrics.json'} and {out_dir / 'pca.png'}")
    return summary
