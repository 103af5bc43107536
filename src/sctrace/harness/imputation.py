"""The imputation experiment (paper B.3, `sctrace impute`): the 80/20 split, generation from held-out source cells."""

from __future__ import annotations

import math
import os
import time as clock
from collections.abc import Callable, Sequence
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from sctrace._errors import SctraceInputError, option
from sctrace._threads import set_threads as _set_threads
from sctrace.config import DEFAULT_PRESET
from sctrace.data.io import _check_stratify_column, read_timecourse
from sctrace.estimator import check_run_dir
from sctrace.harness.baselines import _draw_cells
from sctrace.harness.benchmark import TRAIN_FILE, _check_methods, _write_training_file, sctrace_options, training_hvgs
from sctrace.harness.benchmark_jobs import peak_rss_mb
from sctrace.harness.benchmark_scoring import TABLE_METRICS, _format_cell, summarise_runs
from sctrace.harness.evaluate import METRIC_LABELS, lognorm_over_genes, write_json
from sctrace.harness.experiment_common import (
    _data_label,
    _fit_sctrace,
    _legend,
    _prepare_out_dir,
    _real_tokens,
    _score_prediction,
)
from sctrace.harness.metrics import fit_pca

IMPUTATION_METHODS = ("sctrace", "identity")


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
    genes = training_hvgs(timecourse, train_rows, loaded.data.n_top_genes, loaded.data.genes)
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

    from sctrace.harness.plot_common import _save

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
