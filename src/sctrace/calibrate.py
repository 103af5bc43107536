"""How far to trust the model past its last observed time, measured on the training data alone.

Why: decoded beyond its last context time, the network follows the last trend of the training times, and on
real courses that trend often stops or turns back (BENCHMARKS.md, extrapolation): on Shalek LPS 6 h and
Trapnell 72 h the prediction at the requested time is further from the truth than the prediction at the last
observed time. Whether stepping on pays differs by data set, so it is measured on each: an inner model is
trained without the last training time, asked for that time at a fraction ``step`` of the way from the time
before it, and scored (mean per-gene EMD) against the real cells of the last time, which are training cells.
The step with the lowest score is kept when it beats the full step by more than twice the bootstrap noise of
that gain (else the full step: the model's own answer stands); ``TRACE.predict`` past the last time then
decodes at ``last + step * (time - last)``. No held-out cell is read; the cost is one more fit without one time point.
"""

from __future__ import annotations

import copy
import warnings
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.stats import wasserstein_distance

from sctrace.data.arrays import dense
from sctrace.data.corpus import prepare_corpus
from sctrace.data.preprocess import log_normalize
from sctrace.data.timecourse import capped_rows

if TYPE_CHECKING:
    from sctrace.estimator import TRACE

# Fractions of the last observed gap tried; 0 decodes at the last observed time, 1 at the requested one.
STEPS = (0.0, 0.25, 0.5, 0.75, 1.0)
# Real and generated cells the scores are computed on (the last time's cells, capped).
MAX_SCORED_CELLS = 2_000
# A shorter step is taken only when it beats decoding at the asked time by more than this many bootstrap
# standard deviations: without clear evidence the model's own answer stands.
EVIDENCE = 2.0
BOOTSTRAP = 50


def mean_gene_emd(pred, real) -> float:
    """Mean over genes of the 1-D Wasserstein distance between two (cells, genes) log-normalised matrices.

    With as many predicted as real cells it is the mean absolute difference of each gene's sorted values, which
    the bootstrap below needs many times; otherwise scipy's distance gene by gene.
    """
    pred, real = dense(pred), dense(real)
    if pred.shape[0] == real.shape[0]:
        return float(np.abs(np.sort(pred, 0) - np.sort(real, 0)).mean())
    return float(np.mean([wasserstein_distance(pred[:, g], real[:, g]) for g in range(real.shape[1])]))


def gain_noise(better: np.ndarray, direct: np.ndarray, real: np.ndarray, seed: int, n_boot: int = BOOTSTRAP) -> float:
    """Bootstrap standard deviation of ``score(direct) - score(better)``: cells of all three resampled each time."""
    rng = np.random.default_rng(seed)
    n = real.shape[0]
    gains = []
    for _ in range(n_boot):
        ref = real[rng.integers(0, n, n)]
        gains.append(mean_gene_emd(direct[rng.integers(0, n, n)], ref) - mean_gene_emd(better[rng.integers(0, n, n)], ref))
    return float(np.std(gains))


def choose_step(scores: dict[float, float], generated: dict[float, np.ndarray], real: np.ndarray,
                seed: int) -> tuple[float, float, float]:
    """(chosen step, lowest-scoring step, bootstrap noise of its gain over the full step 1.0)."""
    best = min(scores, key=lambda s: scores[s])
    noise = 0.0 if best == 1.0 else gain_noise(generated[best], generated[1.0], real, seed)
    return (best if scores[1.0] - scores[best] > EVIDENCE * noise else 1.0), best, noise


def calibrate_extrapolation(model: TRACE, *, progress: bool = False, accelerator: str = "auto",
                            precision: str = "auto") -> dict:
    """Measure the extrapolation step of ``model`` (fitted from data, before saving) and set ``model.extrapolation``.

    Returns ``{"step", "scores" (step -> mean per-gene EMD), "best_step", "gain_noise", "inner_times",
    "target_time", "n_cells", "n_genes"}``, or with fewer than three training times (the inner model needs a
    source and one target) ``{"step": 1.0, "reason"}``.
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
    with warnings.catch_warnings():
        # Genes silent before the last time drop out of the inner model, as expected; the scores skip them.
        warnings.filterwarnings("ignore", message=".*never expressed in a training cell", category=UserWarning)
        inner.corpus = prepare_corpus(
            model.timecourse, task="none", genes=list(spec.genes), max_len=model.config.data.max_len,
            pairing=model.config.data.pairing, min_rows=model.config.data.min_rows, seed=model.seed,
            gene_medians=gene_medians, exclude_times=excluded, val_fraction=model.config.training.val_fraction,
        )
    inner._prepare_network()
    inner.fit(progress=progress, accelerator=accelerator, precision=precision, calibrate_extrapolation=False)

    rows = capped_rows(np.flatnonzero(np.isclose(model.corpus.cell_times, last)), MAX_SCORED_CELLS, model.seed)
    # The inner model keeps the genes of the model that are expressed in its own training cells: score over those.
    columns = pd.Index(spec.genes).get_indexer(inner.spec.genes)
    real = dense(log_normalize(sp.csr_matrix(model.corpus.counts[rows])[:, columns], spec.count_kind))
    generated, scores = {}, {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the inner model is asked past its own last time on purpose
        for step in STEPS:
            cells = inner.predict(before + step * (last - before), n_cells=len(rows), seed=model.seed)
            generated[step] = dense(log_normalize(cells.X, spec.count_kind))
            scores[step] = mean_gene_emd(generated[step], real)
    chosen, best, noise = choose_step(scores, generated, real, model.seed)
    model.extrapolation = {"step": float(chosen), "scores": {str(k): v for k, v in scores.items()},
                           "best_step": float(best), "gain_noise": noise, "inner_times": kept, "target_time": last,
                           "n_cells": int(len(rows)), "n_genes": int(len(columns))}
    return model.extrapolation


def decoded_time(extrapolation: dict | None, time_values, time: float) -> float:
    """The time the network is asked for: ``time`` itself, or past the last training time the calibrated step."""
    last = max(time_values)
    if extrapolation is None or time <= last:
        return time
    return last + extrapolation["step"] * (time - last)
