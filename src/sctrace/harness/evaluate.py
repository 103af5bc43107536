"""Score generated cells against the real cells of a time point: the one place that prepares real cells for scoring.

Both sides are log-normalised over the scored genes only (``normalize_total`` to 1e4 over those genes, then
``log1p``): a prediction holds only the model's genes, so its library size is their total, and normalising the
real cells by their total over every gene instead would shift every value by the log of the HVG fraction.
Data that already hold log-normalised values (``count_kind='lognorm'``) are subset and used as they are.

ROUGE needs the real cells as rank-value token sentences, which only the run's gene medians define; generated
and real sentences are paired at random without replacement (the paper's pairs are random within a time point),
so ROUGE measures how well a generated sentence matches a typical real one, not a particular cell.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from sctrace._errors import SctraceInputError
from sctrace.data.io import COUNT_KINDS, read_h5ad, read_timecourse
from sctrace.data.preprocess import log_normalize
from sctrace.data.times import parse_time
from sctrace.harness.metrics import score
from sctrace.harness.rouge import rouge1, rouge_l

__all__ = [
    "METRIC_LABELS",
    "ScoringCells",
    "evaluate_prediction",
    "format_evaluation",
    "genes_in_order",
    "lognorm_over_genes",
    "rouge_scores",
    "run_spec",
    "scoring_cells",
    "write_json",
]

# Stable metric names and how tables label them, in the order they are reported.
METRIC_LABELS: dict[str, str] = {
    "mmd": "MMD",
    "emd": "EMD",
    "e_distance": "E-distance",
    "pearson": "PearsonR",
    "r2": "R²",
    "pearson_delta": "Pearson-delta",
    "gene_corr": "gene-gene r",
    "c2st_auc": "C2ST AUC",
    "gene_corr_iid": "gene-gene r (iid)",
    "c2st_auc_iid": "C2ST AUC (iid)",
    "rouge1_f1": "ROUGE-1 F1",
    "rougeL_f1": "ROUGE-L F1",
}
LOWER_IS_BETTER = ("mmd", "emd", "e_distance", "c2st_auc", "c2st_auc_iid")


def genes_in_order(gene_names: Sequence[str] | np.ndarray, genes: Sequence[str] | np.ndarray,
                   what: str = "the data") -> np.ndarray:
    """Column positions of ``genes`` in ``gene_names``, or an error that says how many are missing.

    Parameters
    ----------
    gene_names
        (n_all,) gene names of the matrix's columns.
    genes
        (n_genes,) names wanted, in the wanted order.
    what
        How the error names the matrix.

    Returns
    -------
    np.ndarray
        (n_genes,) int64 column indices.
    """
    positions = pd.Index(np.asarray(gene_names).astype(str)).get_indexer(np.asarray(genes).astype(str))
    missing = positions < 0
    if missing.any():
        examples = ", ".join(np.asarray(genes).astype(str)[missing][:5])
        raise SctraceInputError(
            f"{int(missing.sum())} of the {len(genes)} genes to score are missing from {what} (e.g. {examples}); "
            "pass data with the same gene names as the prediction."
        )
    return positions


def lognorm_over_genes(matrix, gene_names: Sequence[str] | np.ndarray, genes: Sequence[str] | np.ndarray,
                       count_kind: str = "counts", what: str = "the data") -> sp.csr_matrix:
    """Subset the columns to ``genes`` (by name, in that order), then log-normalise over those genes.

    Parameters
    ----------
    matrix
        (n_cells, n_all) raw counts, or log-normalised values when ``count_kind='lognorm'``; dense or sparse.
    gene_names
        (n_all,) names of the columns.
    genes
        (n_genes,) genes to keep.
    count_kind
        ``counts`` or ``lognorm``.

    Returns
    -------
    scipy.sparse.csr_matrix
        (n_cells, n_genes) float32 log-normalised expression.
    """
    if count_kind not in COUNT_KINDS:
        raise SctraceInputError(f"unknown count_kind {count_kind!r}; choose one of {', '.join(COUNT_KINDS)}.")
    columns = genes_in_order(gene_names, genes, what)
    subset = sp.csr_matrix(matrix[:, columns]) if sp.issparse(matrix) else sp.csr_matrix(np.asarray(matrix)[:, columns])
    return sp.csr_matrix(log_normalize(subset, count_kind), dtype=np.float32)


@dataclass(frozen=True)
class ScoringCells:
    """The real cells a prediction is scored against.

    Attributes
    ----------
    genes
        (n_genes,) the scored genes, in column order.
    time
        The time point of ``real``.
    reference_time
        The previous observed time (``reference``'s), or None when ``time`` is the first one.
    real
        (n_real, n_genes) float32 CSR log-normalised cells at ``time``.
    reference
        (n_reference, n_genes) float32 CSR log-normalised cells at ``reference_time``, or None.
    real_rows
        (n_real,) row indices of the real cells in the input matrix (to tokenize them for ROUGE).
    """

    genes: list[str]
    time: float
    reference_time: float | None
    real: sp.csr_matrix
    reference: sp.csr_matrix | None
    real_rows: np.ndarray


def scoring_cells(matrix, times: np.ndarray, gene_names: Sequence[str] | np.ndarray, genes: Sequence[str] | np.ndarray,
                  time: float, count_kind: str = "counts",
                  observed_times: Sequence[float] | np.ndarray | None = None) -> ScoringCells:
    """Log-normalised real cells at ``time`` and at the previous observed time, over ``genes``.

    Parameters
    ----------
    matrix
        (n_cells, n_all) expression of every cell (raw counts, or log-normalised for ``count_kind='lognorm'``).
    times
        (n_cells,) real time of each cell.
    gene_names
        (n_all,) names of the columns.
    genes
        (n_genes,) genes to score over (a model's or a prediction's).
    time
        Time point to score at; some cell must be there.
    count_kind
        ``counts`` or ``lognorm``.
    observed_times
        Times that count as observed when looking for the previous one (a run's training times); None takes
        every time in ``times``. Held-out times other than ``time`` are thereby never used as the reference.

    Returns
    -------
    ScoringCells
    """
    times = np.asarray(times, dtype=np.float64)
    real_rows = np.flatnonzero(np.isclose(times, time))
    if real_rows.size == 0:
        observed = ", ".join(f"{t:g}" for t in np.unique(times))
        raise SctraceInputError(f"the data have no cells at time {time:g}; choose one of the observed times {observed}.")
    candidates = np.unique(times) if observed_times is None else np.asarray(observed_times, dtype=np.float64)
    earlier = candidates[candidates < time - 1e-9]
    reference_time = float(earlier.max()) if earlier.size else None
    real = lognorm_over_genes(matrix[real_rows], gene_names, genes, count_kind)
    reference = None
    if reference_time is not None:
        reference = lognorm_over_genes(matrix[np.flatnonzero(np.isclose(times, reference_time))], gene_names, genes,
                                       count_kind)
    return ScoringCells(list(map(str, genes)), float(time), reference_time, real, reference, real_rows)


def rouge_scores(generated_tokens: np.ndarray, real_tokens: np.ndarray, seed: int = 0) -> dict[str, float]:
    """ROUGE-1 and ROUGE-L of generated sentences against randomly paired real sentences.

    Each generated sentence is paired with one real sentence drawn without replacement (every real cell is
    used once before any is reused, when there are more generated than real cells).

    Parameters
    ----------
    generated_tokens
        (n_generated, len) int gene token ids padded with 0.
    real_tokens
        (n_real, max_len) int gene token ids of the real cells padded with 0, from the same vocabulary.
    seed
        Seed of the pairing.

    Returns
    -------
    dict
        ``rouge1_precision/recall/f1`` and ``rougeL_precision/recall/f1``.
    """
    n_generated, n_real = len(generated_tokens), len(real_tokens)
    if n_generated == 0 or n_real == 0:
        raise SctraceInputError("ROUGE needs at least one generated and one real cell; pass non-empty sets.")
    rng = np.random.default_rng(seed)
    repeats = math.ceil(n_generated / n_real)
    partners = np.concatenate([rng.permutation(n_real) for _ in range(repeats)])[:n_generated]
    paired = np.asarray(real_tokens)[partners]
    return {**rouge1(generated_tokens, paired), **rouge_l(generated_tokens, paired)}


def run_spec(run_dir: str | os.PathLike):
    """The corpus spec (genes, medians, max_len) of a run directory, read without loading the network."""
    from sctrace.data.corpus_types import CorpusSpec
    from sctrace.estimator import CORPUS_DIR

    path = Path(run_dir) / CORPUS_DIR / "corpus.json"
    if not path.exists():
        raise SctraceInputError(f"{run_dir} is not a run directory of `sctrace fit` ({path} is missing); pass --run RUN_DIR.")
    return CorpusSpec.from_json(path)


def evaluate_prediction(pred: ad.AnnData | str | os.PathLike, data: ad.AnnData | str | os.PathLike, time_key: str,
                        time: float | str, *, layer: str | None = None, count_kind: str | None = None,
                        run_dir: str | os.PathLike | None = None, seed: int = 0,
                        mmd_max_cells: int | None = 2000) -> dict:
    """Score predicted cells against the real cells of ``data`` at ``time``, over the prediction's genes.

    Parameters
    ----------
    pred
        AnnData (or .h5ad path) of generated cells: raw counts in ``X`` over its genes (log-normalised values
        when its ``uns['sctrace']['count_kind']`` is ``lognorm``); optionally ``obsm['sctrace_tokens']``.
    data
        AnnData (or .h5ad path) with real cells, a ``time_key`` column and every gene of ``pred``.
    time_key
        obs column of ``data`` with the time.
    time
        Time point to score at (a number or a label :func:`sctrace.data.io.parse_time` reads).
    layer
        Layer of ``data`` with the expression (default ``X``).
    count_kind
        ``counts`` or ``lognorm``; default ``pred.uns['sctrace']['count_kind']`` when present, else ``counts``.
    run_dir
        Run directory of the model that made ``pred``: its gene medians tokenize the real cells for ROUGE.
        Without it ROUGE is skipped and a note says so.
    seed
        Seed of the MMD subsampling and of the ROUGE pairing.
    mmd_max_cells
        Passed to :func:`sctrace.harness.metrics.mmd_rbf`.

    Returns
    -------
    dict
        ``time``, ``reference_time``, ``n_pred``, ``n_real``, ``n_genes``, ``count_kind``, ``metrics`` (name ->
        value, see :data:`METRIC_LABELS`) and ``notes`` (what was skipped and why).
    """
    if not isinstance(pred, ad.AnnData):
        pred = read_h5ad(pred, what="prediction file")
    if pred.n_obs == 0 or pred.n_vars == 0:
        raise SctraceInputError(f"the prediction is empty ({pred.n_obs} cells x {pred.n_vars} genes); pass generated cells.")
    if count_kind is None:
        count_kind = str(pred.uns.get("sctrace", {}).get("count_kind", "counts"))
    timecourse = read_timecourse(data, time_key, layer=layer, count_kind=count_kind)
    time = parse_time(time)
    genes = np.asarray(pred.var_names).astype(str)
    cells = scoring_cells(timecourse.expression(), timecourse.times, timecourse.gene_names(), genes, time, count_kind)
    predicted = lognorm_over_genes(pred.X, genes, genes, count_kind, what="the prediction")
    metrics = score(predicted, cells.real, reference=cells.reference, seed=seed, mmd_max_cells=mmd_max_cells)
    notes = []
    if cells.reference is None:
        notes.append(f"pearson_delta skipped: no observed time before {time:g} to take the change from.")
    if "sctrace_tokens" not in pred.obsm:
        notes.append("ROUGE skipped: the prediction has no obsm['sctrace_tokens'] (token sentences).")
    elif run_dir is None:
        notes.append("ROUGE skipped: tokenizing the real cells needs the run's gene medians; pass --run RUN_DIR.")
    else:
        metrics.update(_rouge_against_data(pred, timecourse, cells, run_dir, seed))
    return {"time": time, "reference_time": cells.reference_time, "n_pred": int(pred.n_obs),
            "n_real": int(cells.real.shape[0]), "n_genes": int(len(genes)), "count_kind": count_kind,
            "metrics": metrics, "notes": notes}


def _rouge_against_data(pred: ad.AnnData, timecourse, cells: ScoringCells, run_dir, seed: int) -> dict[str, float]:
    from sctrace.data.corpus import tokenize_with_spec

    spec = run_spec(run_dir)
    if list(spec.genes) != list(map(str, pred.var_names)):
        raise SctraceInputError(
            f"the prediction's genes differ from those of the run in {run_dir}; pass the run that made the prediction."
        )
    real_matrix = timecourse.expression()[cells.real_rows]
    real_tokens, _ = tokenize_with_spec(spec, real_matrix, timecourse.gene_names())
    return rouge_scores(np.asarray(pred.obsm["sctrace_tokens"]), real_tokens, seed=seed)


def format_evaluation(result: dict) -> str:
    """A short text table of :func:`evaluate_prediction`'s result, with the direction of each metric."""
    lines = [f"time {result['time']:g}: {result['n_pred']} generated vs {result['n_real']} real cells over "
             f"{result['n_genes']} genes (reference time: "
             f"{'-' if result['reference_time'] is None else format(result['reference_time'], 'g')})"]
    for name, label in METRIC_LABELS.items():
        if name in result["metrics"]:
            direction = "lower is better" if name in LOWER_IS_BETTER else "higher is better"
            lines.append(f"  {label:<14} {result['metrics'][name]:>10.4f}   ({direction})")
    lines.extend(f"  note: {note}" for note in result["notes"])
    return "\n".join(lines)


def write_json(result: dict, path: str | os.PathLike) -> Path:
    """Write a result dict as JSON (NaN kept as NaN, numpy scalars as numbers)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1, default=float))
    return path
