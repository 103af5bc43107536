"""The paper's two appendix experiments: imputation of held-out cells (B.3) and extrapolation by distance (B.4).

Imputation (``sctrace impute``)
    The cells of every time point are split 80/20 (seeded; within each time x cell type group where cell types
    are known). TRACE is trained on the 80% of every time point (task ``none``). For every time point after the
    first, cells are generated starting from the held-out cells of the first time point (the source, which is
    not imputed itself: the paper's Figure 8 shows "all activated time points", i.e. every one but the
    resting source) and scored against the held-out cells of that time point. The floor ``identity`` is the
    training cells of that same time point: real cells the model saw, so beating it is hard.

Extrapolation by distance (``sctrace extrapolation``)
    TRACE is trained on the first ``k`` observed time points only; each later time point is predicted on its
    own and scored against all its real cells, and the metrics are reported against the number of observed
    steps past the last training time (1, 2, ...) and the real time difference. The floor ``identity`` is the
    cells of the last training time point.

Both score as :mod:`sctrace.harness.benchmark` does: every method produces as many cells as the scored real set has
(the biased MMD carries a ``1/n`` term per set, so the sizes must match), over the HVGs chosen on the training
cells (which are sctrace's own, checked), with :func:`sctrace.harness.metrics.score` on log-normalised expression;
ROUGE-1 for sctrace against the real cells tokenized with the run's gene medians. sctrace reads only
``OUT/work/train.h5ad``, which holds the training cells alone; the floors and OT-CFM get only training rows.
"""

from __future__ import annotations

import math
import os
import time as clock
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from sctrace._errors import SctraceInputError, in_words, option
from sctrace.config import DEFAULT_PRESET
from sctrace.data.io import _check_stratify_column, read_timecourse
from sctrace.estimator import check_run_dir, prepare_run_dir, remove_entries
from sctrace.harness.baselines import INTERPOLATION_ONLY, _draw_cells
from sctrace.harness.benchmark import (
    TABLE_METRICS,
    TRAIN_FILE,
    _check_methods,
    _format_cell,
    _peer_settings,
    _set_threads,
    _write_training_file,
    peak_rss_mb,
    sctrace_options,
    summarise_runs,
    training_hvgs,
)
from sctrace.harness.distances import e_distance
from sctrace.harness.evaluate import (
    LOWER_IS_BETTER,
    METRIC_LABELS,
    lognorm_over_genes,
    rouge_scores,
    scoring_cells,
    write_json,
)
from sctrace.harness.methods import METHOD_REGISTRY, fit_method
from sctrace.harness.metrics import fit_pca, score

__all__ = [
    "IMPUTATION_METHODS",
    "extrapolation_markdown",
    "imputation_markdown",
    "run_extrapolation_distance",
    "run_imputation",
    "split_cells",
]

IMPUTATION_METHODS = ("sctrace", "identity")
# The panels of the extrapolation plot: the paper's Figure 10 shows MMD; EMD, Pearson-delta and E-distance
# say more on log-normalised data (plain Pearson stays near 1 for any method).
DISTANCE_PLOT_METRICS = ("emd", "mmd", "pearson_delta", "e_distance")
# Result files and folders an experiment writes; an --overwrite run removes these (and only these) first.
_OUTPUTS = ("imputation.json", "imputation.md", "extrapolation.json", "extrapolation.md", "split.csv", "plots",
            "runs", "work")


# ----------------------------------------------------------------------------------------------------------------
# the split
# ----------------------------------------------------------------------------------------------------------------


def split_cells(times: np.ndarray, strata: np.ndarray | None = None, test_fraction: float = 0.2,
                seed: int = 0) -> np.ndarray:
    """Hold out ``test_fraction`` of the cells of every time point, in proportion within each stratum.

    A time point with ``n`` cells holds out ``floor(test_fraction * n + 0.5)`` of them exactly; that number is
    shared among its strata by largest remainders (Hamilton's method, ties in random order), so each stratum
    holds out the floor or the ceiling of its proportional share (within 1.5 cells of ``test_fraction`` of its
    size) and a rare cell type is present on both sides whenever it has enough cells.

    Parameters
    ----------
    times
        (n_cells,) real time of each cell.
    strata
        (n_cells,) label of each cell (e.g. cell type), or None for no stratification.
    test_fraction
        Fraction held out, in (0, 1).
    seed
        Seed of the draw.

    Returns
    -------
    np.ndarray
        (n_cells,) bool, True for held-out cells.
    """
    if not 0.0 < test_fraction < 1.0:
        raise SctraceInputError(f"the test fraction must be between 0 and 1 (exclusive), got {test_fraction:g}; "
                                f"pass e.g. {option('test_fraction', 0.2)}.")
    times = np.asarray(times, dtype=np.float64)
    codes = np.zeros(times.size, dtype=np.int64) if strata is None else pd.factorize(np.asarray(strata).astype(str))[0]
    rng = np.random.default_rng(seed)
    held_out = np.zeros(times.size, dtype=bool)
    for time in np.unique(times):
        rows = np.flatnonzero(times == time)
        n_test = math.floor(test_fraction * rows.size + 0.5)
        if n_test < 2 or rows.size - n_test < 2:
            raise SctraceInputError(
                f"time point {time:g} has {rows.size} cells, so a test fraction of {test_fraction:g} leaves "
                f"{n_test} held-out and {rows.size - n_test} training cells (at least 2 of each are needed); "
                "change --test-fraction or drop that time point."
            )
        groups, sizes = np.unique(codes[rows], return_counts=True)
        quotas = n_test * sizes / rows.size
        counts = np.floor(quotas).astype(np.int64)
        order = rng.permutation(groups.size)
        order = order[np.argsort(-(quotas - counts)[order], kind="stable")]
        counts[order[: n_test - counts.sum()]] += 1
        for group, count in zip(groups, counts):
            members = rows[codes[rows] == group]
            held_out[rng.choice(members, size=count, replace=False)] = True
    return held_out


def _draw_evenly(n_available: int, n_draws: int, rng: np.random.Generator) -> np.ndarray:
    """``n_draws`` indices below ``n_available``, each used once before any is used again."""
    repeats = math.ceil(n_draws / n_available)
    return np.concatenate([rng.permutation(n_available) for _ in range(repeats)])[:n_draws]


# ----------------------------------------------------------------------------------------------------------------
# shared steps
# ----------------------------------------------------------------------------------------------------------------


def _prepare_out_dir(out_dir: Path, overwrite: bool) -> Path:
    """Create ``out_dir`` (refusing one that is in use unless ``overwrite``), clearing earlier results."""
    prepare_run_dir(out_dir, overwrite=overwrite)
    remove_entries(out_dir, _OUTPUTS)
    return out_dir


def _fit_sctrace(train_path: Path, time_key: str, genes: list[str], count_kind: str, preset: str, config,
                 overrides: dict, seed: int, run_dir: Path):
    """TRACE trained (task ``none``) on every cell of the training file; returns the model and the fit seconds."""
    from sctrace.estimator import TRACE

    started = clock.perf_counter()
    model = TRACE(train_path, time_key, task="none", count_kind=count_kind, preset=preset, config=config, seed=seed,
                  **overrides)
    if list(model.spec.genes) != list(genes):
        raise RuntimeError("sctrace chose other genes than the experiment; the two HVG selections have diverged.")
    model.fit(run_dir=run_dir, overwrite=True, progress=False)
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


# ----------------------------------------------------------------------------------------------------------------
# imputation
# ----------------------------------------------------------------------------------------------------------------


def run_imputation(
    data: ad.AnnData | str | os.PathLike,
    time_key: str = "time",
    *,
    out_dir: str | os.PathLike,
    seed: int = 0,
    test_fraction: float = 0.2,
    stratify_key: str | None = None,
    methods: Sequence[str] = IMPUTATION_METHODS,
    n_cells: int | None = None,
    preset: str = DEFAULT_PRESET,
    config: str | os.PathLike | None = None,
    max_epochs: int | None = None,
    overrides: dict | None = None,
    count_kind: str = "counts",
    layer: str | None = None,
    threads: int = 1,
    overwrite: bool = False,
    plots: bool = True,
    echo: Callable[[str], None] = print,
) -> dict:
    """Impute held-out cells at every time point after the first from held-out source cells; score and write.

    Parameters
    ----------
    data
        AnnData or .h5ad path with raw counts (or log-normalised values with ``count_kind='lognorm'``).
    time_key
        obs column with the time.
    out_dir
        Output folder: ``imputation.json``, ``imputation.md``, ``split.csv`` (every cell's split),
        ``plots/`` (a PCA per time point and one over all), ``runs/`` (the sctrace run), ``work/`` (training
        file and each method's predicted log-normalised cells as ``.npz``).
    seed
        Seed of the split, of training and of generation.
    test_fraction
        Fraction of each time point held out (see :func:`split_cells`).
    stratify_key
        obs column to split within (each time x label group); default ``cell_type`` when obs has it.
    methods
        Any of :data:`IMPUTATION_METHODS`.
    n_cells
        Cells each method produces per time point; default as many as that time point holds out.
    preset, config, max_epochs, overrides
        sctrace's hyper-parameters (``overrides``: config keys, applied last).
    count_kind, layer
        What the expression holds, and where (default ``X``).
    threads
        torch/BLAS threads.
    overwrite
        Replace the results of an earlier experiment in ``out_dir``.
    plots
        Write the plots.
    echo
        Where progress lines go.

    Returns
    -------
    dict
        What ``imputation.json`` holds: ``rows`` (one per target time and method: metrics, ``n_pred``,
        ``n_real``, ``reference_time``), ``mean`` (method -> metric -> mean over the target times), the split's
        cell counts per time, settings and notes.
    """
    methods, _ = _check_methods(methods, [seed])
    unknown = [m for m in methods if m not in IMPUTATION_METHODS]
    if unknown:
        raise SctraceInputError(f"method(s) {', '.join(unknown)} cannot impute held-out cells; choose from "
                                f"{', '.join(IMPUTATION_METHODS)}.")
    if n_cells is not None and n_cells < 2:
        raise SctraceInputError(f"n_cells must be at least 2 to score a time point, got {n_cells}.")
    out_dir = check_run_dir(out_dir, overwrite=overwrite)
    overrides, loaded = sctrace_options(preset, config, max_epochs, count_kind, overrides)
    _set_threads(threads, torch_too=True)

    timecourse = read_timecourse(data, time_key, layer=layer, count_kind=count_kind)
    obs = timecourse.adata.obs
    if not timecourse.adata.obs_names.is_unique:
        raise SctraceInputError("the cells' obs_names are not unique; call adata.obs_names_make_unique() first.")
    time_values = timecourse.time_values
    if time_values.size < 2:
        raise SctraceInputError(f"imputation needs at least 2 time points (the first is the source), the data have "
                                f"{time_values.size}.")
    if stratify_key is None and "cell_type" in obs.columns:
        stratify_key = "cell_type"
    if stratify_key is not None:
        _check_stratify_column(obs, stratify_key)
    strata = None if stratify_key is None else obs[stratify_key].astype(str).to_numpy()
    held_out = split_cells(timecourse.times, strata, test_fraction, seed)

    _prepare_out_dir(out_dir, overwrite)
    times, matrix, gene_names = timecourse.times, timecourse.expression(), timecourse.gene_names()
    train_rows, test_rows = np.flatnonzero(~held_out), np.flatnonzero(held_out)
    pd.DataFrame({"obs_name": timecourse.adata.obs_names.astype(str), "time": times,
                  "stratum": "-" if strata is None else strata,
                  "split": np.where(held_out, "held_out", "train")}).to_csv(out_dir / "split.csv", index=False)
    work = out_dir / "work"
    _write_training_file(timecourse, train_rows, work / TRAIN_FILE)
    genes = training_hvgs(timecourse, train_rows, loaded.n_top_genes, loaded.genes)
    lognorm = lognorm_over_genes(matrix, gene_names, genes, count_kind)
    source_time = float(time_values[0])
    source_rows = test_rows[times[test_rows] == source_time]
    echo(f"imputation: {train_rows.size} training and {test_rows.size} held-out cells at "
         f"{', '.join(f'{t:g}' for t in time_values)} (split within {stratify_key or 'time points only'}); "
         f"{len(genes)} HVGs; {source_rows.size} held-out source cells at {source_time:g}")

    model, fit_seconds = None, 0.0
    if "sctrace" in methods:
        model, fit_seconds = _fit_sctrace(work / TRAIN_FILE, time_key, genes, count_kind, preset, config, overrides,
                                          seed, out_dir / "runs" / f"sctrace_seed{seed}")
        echo(f"[sctrace] fitted in {fit_seconds:.1f} s")
    source_matrix = sp.csr_matrix(matrix[source_rows])
    source_names = timecourse.adata.obs_names.to_numpy().astype(str)[source_rows]

    predictions_dir = work / "predictions"
    predictions_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows, predict_seconds, overview = [], 0.0, {}
    for index in range(1, time_values.size):
        time = float(time_values[index])
        at_time = times == time
        real_rows, train_here = np.flatnonzero(held_out & at_time), np.flatnonzero(~held_out & at_time)
        reference_rows = np.flatnonzero(~held_out & (times == time_values[index - 1]))
        real, reference = lognorm[real_rows], lognorm[reference_rows]
        # The PCA of this time point's real training cells: many more cells than the held-out set, none scored.
        pca = fit_pca(lognorm[train_here])
        n_pred = n_cells or real_rows.size
        predictions = {}
        for method in methods:
            tokens = real_tokens = None
            if method == "sctrace":
                started = clock.perf_counter()
                draw = _draw_evenly(source_rows.size, n_pred, rng)
                generated = _generate_from(model, time, source_matrix[draw], source_names[draw], gene_names, seed)
                predict_seconds += clock.perf_counter() - started
                predicted = lognorm_over_genes(generated.X, generated.var_names, genes, count_kind).toarray()
                tokens = np.asarray(generated.obsm["sctrace_tokens"])
                real_tokens = _real_tokens(model, matrix, real_rows, gene_names)
                extra = {"source_cells": source_names[draw], "tokens": tokens}
            else:
                chosen = train_here[_draw_cells(train_here.size, n_pred, rng)]
                predicted = lognorm[chosen].toarray()
                extra = {"cells": timecourse.adata.obs_names.to_numpy().astype(str)[chosen]}
            np.savez_compressed(predictions_dir / f"{method}_time{time:g}.npz", expression=predicted, **extra)
            predictions[method] = predicted
            metrics = _score_prediction(predicted, real, reference, seed, pca, tokens, real_tokens)
            rows.append({"time": time, "method": method, "n_pred": int(predicted.shape[0]),
                         "n_real": int(real_rows.size), "reference_time": float(time_values[index - 1]), **metrics})
        if plots:
            from sctrace.harness.plots import pca_overlay

            (out_dir / "plots").mkdir(parents=True, exist_ok=True)
            pca_overlay(real, predictions, out_dir / "plots" / f"pca_time_{time:g}.png",
                        title=f"imputation at time {time:g}: {real_rows.size} held-out cells")
        overview[time] = (real, predictions.get("sctrace"))
        echo(f"time {time:g}: " + "; ".join(
            f"{row['method']} EMD {row['emd']:.4f} MMD {row['mmd']:.4f}" for row in rows if row["time"] == time))

    if plots and model is not None:
        _imputation_overview_plot(out_dir / "plots" / "pca_all_times.png", overview)
    results = {
        "experiment": "imputation", "data": _data_label(data), "time_key": time_key, "seed": seed,
        "test_fraction": test_fraction, "stratify_key": stratify_key, "source_time": source_time,
        "target_times": [float(t) for t in time_values[1:]], "methods": methods,
        "cells": [{"time": float(t), "train": int((~held_out & (times == t)).sum()),
                   "held_out": int((held_out & (times == t)).sum())} for t in time_values],
        "n_genes": len(genes), "genes": genes, "rows": rows, "mean": _mean_over_times(rows, methods),
        "count_kind": count_kind, "preset": preset, "config": None if config is None else str(config),
        "sctrace_overrides": overrides, "fit_s": fit_seconds, "predict_s": predict_seconds, "peak_mb": peak_rss_mb(),
        "notes": [
            f"The first time point ({source_time:g}) is the source and is not imputed (as in the paper's B.3, which "
            "imputes every activated time point): its held-out cells start every generation, each used once "
            "before any is reused.",
            "identity: real training cells of the same time point, drawn to the held-out count (an honest floor: "
            "they are real cells of the right time that the model was trained on).",
            "E-distance is computed in the PCA (50 PCs) of that time point's real training cells; Pearson-delta "
            "takes the change from the previous time point's training cells.",
            "No held-out cell was used for training: the model read only work/train.h5ad.",
        ],
    }
    write_json(results, out_dir / "imputation.json")
    (out_dir / "imputation.md").write_text(imputation_markdown(results))
    echo(imputation_markdown(results))
    return results


def _generate_from(model, time: float, source_matrix, source_names: np.ndarray, gene_names: np.ndarray, seed: int):
    """One cell generated at ``time`` from each given source cell ((n, n_all_genes) expression, (n,) names)."""
    # A source cell drawn twice gets a suffixed name; AnnData warns about repeated obs names.
    obs = pd.DataFrame(index=ad.utils.make_index_unique(pd.Index(source_names)))
    return model.predict(time, seed=seed, source=ad.AnnData(source_matrix, obs=obs, var=pd.DataFrame(index=gene_names)))


def _mean_over_times(rows: list[dict], methods: Sequence[str]) -> dict[str, dict[str, float]]:
    keys = [*METRIC_LABELS, "rouge1_precision", "rouge1_recall"]
    return {method: summarise_runs([row for row in rows if row["method"] == method], keys)[0] for method in methods}


def imputation_markdown(results: dict) -> str:
    """The imputation table: a row per time point and method, then the mean over time points per method."""
    metrics = [m for m in TABLE_METRICS if any(m in row for row in results["rows"])]
    counts = ", ".join(f"{c['time']:g}: {c['train']}/{c['held_out']}" for c in results["cells"])
    lines = [
        f"# Imputation of held-out cells ({results['test_fraction']:g} of every time point held out)",
        "",
        f"Data: {results['data']}; split within {results['stratify_key'] or 'time points only'}, seed "
        f"{results['seed']}; training/held-out cells per time: {counts}. Source: the held-out cells at "
        f"{results['source_time']:g}. {results['n_genes']} HVGs chosen on the training cells.",
        "",
        "| time | method | n real | " + " | ".join(METRIC_LABELS[m] for m in metrics) + " |",
        "|---|---|---|" + "---|" * len(metrics),
    ]
    for row in results["rows"]:
        cells = [_format_cell(row, {}, m) for m in metrics]
        lines.append(f"| {row['time']:g} | {row['method']} | {row['n_real']} | " + " | ".join(cells) + " |")
    for method, mean in results["mean"].items():
        lines.append(f"| **mean** | {method} | | " + " | ".join(_format_cell(mean, {}, m) for m in metrics) + " |")
    lines += ["", _legend(),
              f"sctrace: fit {results['fit_s']:.0f} s, generation {results['predict_s']:.0f} s; peak memory of the "
              f"process {results['peak_mb']:.0f} MB.",
              *[f"- {note}" for note in results["notes"]]]
    return "\n".join(lines) + "\n"


def _imputation_overview_plot(path: Path, overview: dict[float, tuple]) -> Path:
    """The paper's Figure 8: generated and held-out cells of every imputed time point in one PCA of the held-out
    cells, (a) coloured by origin, (b) coloured by time."""
    import matplotlib.pyplot as plt

    from sctrace.harness.plots import _save

    times = list(overview)
    real = sp.vstack([sp.csr_matrix(overview[t][0]) for t in times])
    pca = fit_pca(real, n_pcs=2)
    colours = plt.get_cmap("viridis")(np.linspace(0, 1, len(times)))
    fig, (by_origin, by_time) = plt.subplots(1, 2, figsize=(10, 4.5))
    for t, colour in zip(times, colours):
        real_xy, generated_xy = pca.transform(overview[t][0]), pca.transform(overview[t][1])
        by_origin.scatter(real_xy[:, 0], real_xy[:, 1], s=4, c="lightgray", label="held-out" if t == times[0] else None)
        by_origin.scatter(generated_xy[:, 0], generated_xy[:, 1], s=4, c="tab:blue", alpha=0.5,
                          label="generated" if t == times[0] else None)
        by_time.scatter(real_xy[:, 0], real_xy[:, 1], s=4, color=colour, alpha=0.35)
        by_time.scatter(generated_xy[:, 0], generated_xy[:, 1], s=12, color=colour, marker="x", label=f"time {t:g}")
    for ax, title in ((by_origin, "(a) generated vs held-out"), (by_time, "(b) by time: held-out (o), generated (x)")):
        ax.set_xlabel("PC1 (held-out cells)")
        ax.set_ylabel("PC2 (held-out cells)")
        ax.set_title(title)
        ax.legend(markerscale=3, fontsize=8)
    return _save(fig, path)


# ----------------------------------------------------------------------------------------------------------------
# extrapolation by distance
# ----------------------------------------------------------------------------------------------------------------


def run_extrapolation_distance(
    data: ad.AnnData | str | os.PathLike,
    time_key: str = "time",
    *,
    k: int,
    out_dir: str | os.PathLike,
    seeds: Sequence[int] = (0,),
    methods: Sequence[str] = ("sctrace", "identity"),
    preset: str = DEFAULT_PRESET,
    config: str | os.PathLike | None = None,
    max_epochs: int | None = None,
    overrides: dict | None = None,
    otcfm_settings: dict | None = None,
    mioflow_settings: dict | None = None,
    count_kind: str = "counts",
    layer: str | None = None,
    threads: int = 1,
    overwrite: bool = False,
    plots: bool = True,
    echo: Callable[[str], None] = print,
) -> dict:
    """Train on the first ``k`` time points, predict every later one separately, and score against distance.

    Parameters
    ----------
    data
        AnnData or .h5ad path with raw counts (or log-normalised values with ``count_kind='lognorm'``).
    time_key
        obs column with the time.
    k
        Number of leading observed time points to train on; at least 2 and fewer than the number observed.
    out_dir
        Output folder: ``extrapolation.json``, ``extrapolation.md``, ``plots/`` (the metrics against distance
        and a PCA per predicted time), ``runs/`` (sctrace runs), ``work/`` (training file, predictions).
    seeds
        One fit of every method per seed; the tables give mean ± sample sd over seeds.
    methods
        Any of ``sctrace``, ``identity``, ``otcfm``, ``mioflow`` (``linear`` only interpolates and is skipped
        with a note; a peer is skipped when its package is absent).
    preset, config, max_epochs, overrides
        sctrace's hyper-parameters (``overrides``: config keys, applied last).
    otcfm_settings
        Fields of :class:`sctrace.harness.peers.otcfm.OTCFMSettings`.
    mioflow_settings
        Fields of :class:`sctrace.harness.peers.mioflow.MIOFlowSettings`.
    count_kind, layer
        What the expression holds, and where (default ``X``).
    threads
        torch/BLAS threads.
    overwrite
        Replace the results of an earlier experiment in ``out_dir``.
    plots
        Write the plots.
    echo
        Where progress lines go.

    Returns
    -------
    dict
        What ``extrapolation.json`` holds: ``rows`` (one per predicted time and method with ``steps``,
        ``time_delta``, ``mean``, ``sd`` and the per-seed ``runs``), settings, skipped methods and notes.
    """
    methods, seeds = _check_methods(methods, seeds)
    otcfm_resolved = _peer_settings("otcfm", otcfm_settings, methods)
    mioflow_resolved = _peer_settings("mioflow", mioflow_settings, methods)
    out_dir = check_run_dir(out_dir, overwrite=overwrite)
    overrides, loaded = sctrace_options(preset, config, max_epochs, count_kind, overrides)
    _set_threads(threads, torch_too=True)

    timecourse = read_timecourse(data, time_key, layer=layer, count_kind=count_kind)
    time_values = timecourse.time_values
    if not 2 <= k < time_values.size:
        raise SctraceInputError(
            f"the number of training time points must be at least 2 (a source and a target) and less than the "
            f"{time_values.size} observed, so that a later one is left to predict; got {k} "
            f"({in_words('k', '--train-steps')} 2..{time_values.size - 1})."
        )
    skipped = {}
    for method in INTERPOLATION_ONLY:
        if method in methods:
            skipped[method] = f"the {method} baseline only interpolates between two observed time points."
    if "otcfm" in methods:
        from sctrace.harness.peers import OTCFM_INSTALL_HINT, otcfm_available

        if not otcfm_available():
            skipped["otcfm"] = f"torchcfm is not installed (`{OTCFM_INSTALL_HINT}`)."
    if "mioflow" in methods:
        from sctrace.harness.peers import MIOFLOW_INSTALL_HINT, mioflow_available

        if not mioflow_available():
            skipped["mioflow"] = f"mioflow is not installed (`{MIOFLOW_INSTALL_HINT}`)."
    methods = [m for m in methods if m not in skipped]
    if not methods:
        raise SctraceInputError(f"every method given is skipped ({' '.join(skipped.values())}); add sctrace or "
                                "identity to the methods.")

    _prepare_out_dir(out_dir, overwrite)
    times, matrix, gene_names = timecourse.times, timecourse.expression(), timecourse.gene_names()
    train_times, targets = time_values[:k], time_values[k:]
    last_train = float(train_times[-1])
    train_rows = np.flatnonzero(np.isin(times, train_times))
    work = out_dir / "work"
    _write_training_file(timecourse, train_rows, work / TRAIN_FILE)
    genes = training_hvgs(timecourse, train_rows, loaded.n_top_genes, loaded.genes)
    train_lognorm = lognorm_over_genes(matrix[train_rows], gene_names, genes, count_kind)
    scoring = {float(t): scoring_cells(matrix, times, gene_names, genes, float(t), count_kind,
                                       observed_times=train_times) for t in targets}
    echo(f"extrapolation: training on {train_rows.size} cells at {', '.join(f'{t:g}' for t in train_times)}; "
         f"predicting {', '.join(f'{t:g}' for t in targets)} separately; {len(genes)} HVGs")
    for name, reason in skipped.items():
        echo(f"skipping {name}: {reason}")

    fit_sctrace = partial(_fit_sctrace, work / TRAIN_FILE, time_key, genes, count_kind, preset, config, overrides)
    predictions_dir = work / "predictions"
    predictions_dir.mkdir(parents=True, exist_ok=True)
    runs: dict[tuple[str, float], list[dict]] = {}
    first_seed_predictions: dict[float, dict[str, np.ndarray]] = {float(t): {} for t in targets}
    timings: dict[str, list[float]] = {}
    for seed in seeds:
        for method in methods:
            started = clock.perf_counter()
            run_dir = out_dir / "runs" / f"sctrace_seed{seed}"
            predict, model = _extrapolation_predictor(method, seed, fit_sctrace, run_dir, train_lognorm,
                                                      times[train_rows], otcfm_resolved, mioflow_resolved)
            for target, cells in scoring.items():
                predicted, tokens = predict(target, cells.real.shape[0])
                real_tokens = None if tokens is None else _real_tokens(model, matrix, cells.real_rows, gene_names)
                metrics = _score_prediction(predicted, cells.real, cells.reference, seed, None, tokens, real_tokens)
                runs.setdefault((method, target), []).append({"seed": seed, **metrics})
                np.savez_compressed(predictions_dir / f"{method}_time{target:g}_seed{seed}.npz", expression=predicted)
                if seed == seeds[0]:
                    first_seed_predictions[target][method] = predicted
            timings.setdefault(method, []).append(clock.perf_counter() - started)
            echo(f"[{method} seed {seed}] fitted and predicted {targets.size} time points in "
                 f"{timings[method][-1]:.1f} s")

    keys = [*METRIC_LABELS, "rouge1_precision", "rouge1_recall"]
    rows = []
    for steps, target in enumerate(targets, start=1):
        for method in methods:
            mean, sd = summarise_runs(runs[(method, float(target))], keys)
            rows.append({"time": float(target), "steps": steps, "time_delta": float(target) - last_train,
                         "method": method, "n_real": int(scoring[float(target)].real.shape[0]), "mean": mean, "sd": sd,
                         "runs": runs[(method, float(target))]})
    results = {
        "experiment": "extrapolation_distance", "data": _data_label(data), "time_key": time_key, "k": k,
        "train_times": [float(t) for t in train_times], "target_times": [float(t) for t in targets],
        "seeds": seeds, "methods": methods, "skipped": skipped, "n_genes": len(genes), "genes": genes, "rows": rows,
        "count_kind": count_kind, "preset": preset, "config": None if config is None else str(config),
        "sctrace_overrides": overrides, "otcfm_settings": otcfm_resolved,
        "mioflow_settings": mioflow_resolved,
        "wall_s": {method: float(np.mean(seconds)) for method, seconds in timings.items()},
        "peak_mb": peak_rss_mb(),
        "notes": [
            f"Every method saw only the cells of the first {k} time points (work/train.h5ad); each later time point "
            "was predicted on its own from that one fit and scored against all its real cells.",
            f"identity: cells of the last training time point ({last_train:g}); Pearson-delta takes the change from "
            "that time point's cells.",
            "E-distance is computed in the PCA (50 PCs) of the real cells of the predicted time point.",
        ],
    }
    write_json(results, out_dir / "extrapolation.json")
    (out_dir / "extrapolation.md").write_text(extrapolation_markdown(results))
    echo(extrapolation_markdown(results))
    if plots:
        from sctrace.harness.plots import pca_overlay

        distance_plot(results, out_dir / "plots" / "extrapolation_by_distance.png")
        for target, predictions in first_seed_predictions.items():
            pca_overlay(scoring[target].real, predictions, out_dir / "plots" / f"pca_time_{target:g}.png",
                        title=f"time {target:g}, trained on the first {k} time points (seed {seeds[0]})")
    return results


def _extrapolation_predictor(method: str, seed: int, fit_sctrace: Callable, run_dir: Path, train_lognorm,
                             train_times: np.ndarray, otcfm_settings: dict | None,
                             mioflow_settings: dict | None = None):
    """Fit ``method`` once on the training cells (sctrace through ``fit_sctrace(seed, run_dir)``).

    Returns ``predict(time, n_cells) -> (expression, tokens or None)`` and the fitted TRACE model for sctrace
    (None for the others), whose gene medians tokenize the real cells for ROUGE.
    """
    model = None
    if method == "sctrace":
        model, _ = fit_sctrace(seed, run_dir)

        def predict(target: float, n_cells: int):
            generated = model.predict(target, n_cells=n_cells, seed=seed)
            expression = lognorm_over_genes(generated.X, generated.var_names, model.spec.genes,
                                            model.spec.count_kind).toarray()
            return expression, np.asarray(generated.obsm["sctrace_tokens"])
    elif method in METHOD_REGISTRY and not METHOD_REGISTRY[method].interpolation_only:
        settings = {"otcfm": otcfm_settings, "mioflow": mioflow_settings}.get(method) or {}
        fitted = fit_method(method, train_lognorm, train_times, seed, settings)

        def predict(target: float, n_cells: int):
            return fitted(target, n_cells), None
    else:
        raise SctraceInputError(f"extrapolation by distance does not run {method!r}; use sctrace, identity, otcfm "
                                "or mioflow.")
    return predict, model


def extrapolation_markdown(results: dict) -> str:
    """The extrapolation table: a row per predicted time point and method, mean ± sd over seeds."""
    metrics = [m for m in TABLE_METRICS if any(m in row["mean"] for row in results["rows"])]
    lines = [
        f"# Extrapolation by distance: trained on the first {results['k']} time points "
        f"({', '.join(f'{t:g}' for t in results['train_times'])})",
        "",
        f"Data: {results['data']}; seeds {', '.join(map(str, results['seeds']))}; {results['n_genes']} HVGs chosen "
        "on the training cells. steps: observed time points past the last training one; Δt: real time past it.",
        "",
        "| steps | time | Δt | method | n real | " + " | ".join(METRIC_LABELS[m] for m in metrics) + " |",
        "|---|---|---|---|---|" + "---|" * len(metrics),
    ]
    for row in results["rows"]:
        cells = [_format_cell(row["mean"], row["sd"], m) for m in metrics]
        lines.append(f"| {row['steps']} | {row['time']:g} | {row['time_delta']:g} | {row['method']} | "
                     f"{row['n_real']} | " + " | ".join(cells) + " |")
    wall = ", ".join(f"{method} {seconds:.0f} s" for method, seconds in results["wall_s"].items())
    lines += ["", _legend() + " Values are mean ± sample sd over seeds (no ± with one seed).",
              f"Fit and prediction of every later time point, per seed: {wall}; peak memory of the process "
              f"{results['peak_mb']:.0f} MB.",
              *[f"- {name}: skipped, {reason}" for name, reason in results["skipped"].items()],
              *[f"- {note}" for note in results["notes"]]]
    return "\n".join(lines) + "\n"


def distance_plot(results: dict, path: str | os.PathLike) -> Path:
    """One panel per metric of :data:`DISTANCE_PLOT_METRICS` against steps past the last training time point;
    a line per method, with error bars of the sd over seeds when there are several."""
    import matplotlib.pyplot as plt

    from sctrace.harness.plots import _save

    rows = results["rows"]
    steps = sorted({row["steps"] for row in rows})
    deltas = {row["steps"]: row["time_delta"] for row in rows}
    fig, axes = plt.subplots(1, len(DISTANCE_PLOT_METRICS), figsize=(4 * len(DISTANCE_PLOT_METRICS), 3.8))
    for ax, metric in zip(axes, DISTANCE_PLOT_METRICS):
        for method in results["methods"]:
            mine = sorted((row for row in rows if row["method"] == method), key=lambda row: row["steps"])
            mean = np.array([row["mean"].get(metric, np.nan) for row in mine], dtype=np.float64)
            sd = np.array([row["sd"].get(metric, np.nan) for row in mine], dtype=np.float64)
            ax.errorbar([row["steps"] for row in mine], mean, yerr=None if np.isnan(sd).all() else sd, marker="o",
                        capsize=3, label=method)
        direction = "lower is better" if metric in LOWER_IS_BETTER else "higher is better"
        ax.set_title(f"{METRIC_LABELS[metric]} ({direction})", fontsize=10)
        ax.set_xticks(steps, [f"{s}\n(Δt {deltas[s]:g})" for s in steps])
        ax.set_xlabel("steps past the last training time")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"trained on the first {results['k']} time points; seeds {', '.join(map(str, results['seeds']))}")
    return _save(fig, path)
