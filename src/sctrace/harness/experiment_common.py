"""What the paper's two experiments share: the output folder, fitting sctrace, scoring a prediction, plot labels."""

from __future__ import annotations

import time as clock
from pathlib import Path

import anndata as ad
import numpy as np

from sctrace.estimator import prepare_run_dir, remove_entries
from sctrace.harness.benchmark_scoring import TABLE_METRICS
from sctrace.harness.distances import e_distance
from sctrace.harness.evaluate import LOWER_IS_BETTER, METRIC_LABELS, rouge_scores
from sctrace.harness.metrics import score

# Result files and folders an experiment writes; an --overwrite run removes these (and only these) first.
_OUTPUTS = ("imputation.json", "imputation.md", "extrapolation.json", "extrapolation.md", "split.csv", "plots",
            "runs", "work")


def _prepare_out_dir(out_dir: Path, overwrite: bool) -> Path:
    """Create ``out_dir`` (refusing one that is in use unless ``overwrite``), clearing earlier results."""
    prepare_run_dir(out_dir, overwrite=overwrite)
    remove_entries(out_dir, _OUTPUTS)
    return out_dir


def _fit_sctrace(train_path: Path, time_key: str, genes: list[str], count_kind: str, preset: str, config,
                 overrides: dict, seed: int, run_dir: Path, *, calibrate_extrapolation: bool = False):
    """TRACE trained (task ``none``) on every cell of the training file; returns the model and the fit seconds.

    ``calibrate_extrapolation``: the experiment predicts past the training times, so the fit calibrates the step
    past the last one (:mod:`sctrace.calibrate`), as an extrapolation task's does.
    """
    from sctrace.estimator import TRACE

    started = clock.perf_counter()
    model = TRACE(train_path, time_key, task="none", count_kind=count_kind, preset=preset, config=config, seed=seed,
                  **overrides)
    if list(model.spec.genes) != list(genes):
        raise RuntimeError("sctrace chose other genes than the experiment; the two HVG selections have diverged.")
    model.fit(run_dir=run_dir, overwrite=True, progress=False, calibrate_extrapolation=calibrate_extrapolation)
    return model, clock.perf_counter() - started


def _score_prediction(pred, real, reference, seed: int, pca=None, generated_tokens=None, real_tokens=None) -> dict:
    """:func:`sctrace.harness.metrics.score`, with the E-distance in ``pca``'s space when given and ROUGE with tokens."""
    metrics = score(pred, real, reference=reference, seed=seed)
    if pca is not None:
        metrics["e_distance"] = e_distance(pred, real, pca_fit=pca)
    if generated_tokens is not None:
        metrics.update(rouge_scores(generated_tokens, real_tokens, seed=seed))
    return metrics


def _real_tokens(model, matrix, rows: np.ndarray, gene_names) -> np.ndarray:
    from sctrace.data.corpus import tokenize_with_spec

    return tokenize_with_spec(model.spec, matrix[rows], gene_names)[0]


def _data_label(data) -> str:
    if not isinstance(data, ad.AnnData):
        return str(data)
    simulation = data.uns.get("simulation")
    if simulation is None:
        return "AnnData (in memory)"
    return (f"the built-in simulator (seed {simulation['seed']}, {simulation['n_cells']} cells x "
            f"{simulation['n_genes']} genes)")


def _legend() -> str:
    lower = ", ".join(METRIC_LABELS[m] for m in TABLE_METRICS if m in LOWER_IS_BETTER)
    higher = ", ".join(METRIC_LABELS[m] for m in TABLE_METRICS if m not in LOWER_IS_BETTER)
    return f"{lower}: lower is better; {higher}: higher is better (ROUGE only for sctrace)."
