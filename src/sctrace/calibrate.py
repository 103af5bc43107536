"""How far to trust the model past its last observed time, measured on the training data alone.

Why: decoded beyond its last context time, the network follows the last trend of the training times, and on
real courses that trend often stops or turns back (BENCHMARKS.md, extrapolation): on Shalek LPS 6 h and
Trapnell 72 h the prediction at the requested time is further from the truth than the prediction at the last
observed time. Whether stepping on pays differs by data set, so it is measured on each: an inner model is
trained without the last training time, asked for that time at a fraction ``step`` of the way from the time
before it, and scored (mean per-gene EMD) against the real cells of the last time, which are training cells.
The step with the lowest score is kept; ``TRACE.predict`` past the last time then decodes at
``last + step * (time - last)``. No held-out cell is read; the cost is one more fit without one time point.
"""

from __future__ import annotations

import copy
import warnings
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.stats import wasserstein_distance

from sctrace.data.corpus import prepare_corpus
from sctrace.data.preprocess import log_normalize

if TYPE_CHECKING:
    from sctrace.estimator import TRACE

# Fractions of the last observed gap tried; 0 decodes at the last observed time, 1 at the requested one.
STEPS = (0.0, 0.25, 0.5, 0.75, 1.0)
# Real and generated cells the scores are computed on (the last time's cells, capped).
MAX_SCORED_CELLS = 2_000


def mean_gene_emd(pred, real) -> float:
    """Mean over genes of the 1-D Wasserstein distance between two (cells, genes) log-normalised matrices."""
    pred = pred.toarray() if sp.issparse(pred) else np.asarray(pred)
    real = real.toarray() if sp.issparse(real) else np.asarray(real)
    return float(np.mean([wasserstein_distance(pred[:, g], real[:, g]) for g in range(real.shape[1])]))


def calibrate_extrapolation(model: TRACE, *, progress: bool = False, accelerator: str = "auto",
                            precision: str = "auto") -> dict:
    """Measure the extrapolation step of ``model`` (fitted from data, before saving) and set ``model.extrapolation``.

    Returns ``{"step", "scores" (step -> mean per-gene EMD), "inner_times", "target_time", "n_cells"}``, or with
    fewer than three training times (the inner model needs a source and one target) ``{"step": 1.0, "reason"}``.
    """
    if model.timecourse is None or model.corpus.counts is None:
        raise ValueError("calibrate_extrapolation needs the training data; call it on a model built from them.")
    spec = model.spec
    times = sorted(spec.time_values)
    if len(times) < 3:
        model.extrapolation = {"step": 1.0, "reason": f"{len(times)} training times; the inner model needs three"}
        return model.extrapolation
    last, before = times[-1], times[-2]
    inner = copy.copy(model)
    gene_medians = None
    if model.config.network.encoder == "geneformer":
        from sctrace.network import geneformer_medians

        gene_medians = geneformer_medians(model.config, model.timecourse.gene_names())
    # Every time the model did not train on (the held-out one and, extrapolating, every later one) and the last.
    kept = times[:-1]
    excluded = [t for t in model.timecourse.time_values if not np.isclose(kept, t).any()]
    inner.corpus = prepare_corpus(
        model.timecourse, task="none", genes=list(spec.genes), max_len=model.config.data.max_len,
        pairing=model.config.data.pairing, min_rows=model.config.data.min_rows, seed=model.seed,
        gene_medians=gene_medians, exclude_times=excluded,
    )
    inner._prepare_network()
    inner.fit(progress=progress, accelerator=accelerator, precision=precision, calibrate_extrapolation=False)

    rows = np.flatnonzero(np.isclose(model.corpus.cell_times, last))
    if len(rows) > MAX_SCORED_CELLS:
        rows = np.sort(np.random.default_rng(model.seed).choice(rows, MAX_SCORED_CELLS, replace=False))
    # The inner model keeps the genes of the model that are expressed in its own training cells: score over those.
    columns = pd.Index(spec.genes).get_indexer(inner.spec.genes)
    real = log_normalize(sp.csr_matrix(model.corpus.counts[rows])[:, columns], spec.count_kind)
    scores = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the inner model is asked past its own last time on purpose
        for step in STEPS:
            generated = inner.predict(before + step * (last - before), n_cells=len(rows), seed=model.seed)
            scores[step] = mean_gene_emd(log_normalize(generated.X, spec.count_kind), real)
    best = min(scores, key=lambda s: scores[s])
    model.extrapolation = {"step": float(best), "scores": {str(k): v for k, v in scores.items()},
                           "inner_times": kept, "target_time": last, "n_cells": int(len(rows)),
                           "n_genes": int(len(columns))}
    return model.extrapolation


def decoded_time(extrapolation: dict | None, time_values, time: float) -> float:
    """The time the network is asked for: ``time`` itself, or past the last training time the calibrated step."""
    last = max(time_values)
    if extrapolation is None or time <= last:
        return time
    return last + extrapolation["step"] * (time - last)
