"""Extrapolation by distance (paper B.4, `sctrace extrapolation`): train on the first k times, score each later one."""

from __future__ import annotations

import os
import time as clock
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import anndata as ad
import numpy as np

from sctrace._errors import SctraceInputError, in_words
from sctrace._threads import set_threads as _set_threads
from sctrace.config import DEFAULT_PRESET
from sctrace.data.io import read_timecourse
from sctrace.estimator import check_run_dir
from sctrace.harness.baselines import INTERPOLATION_ONLY
from sctrace.harness.benchmark import (
    TRAIN_FILE,
    _check_methods,
    _peer_settings,
    _write_training_file,
    sctrace_options,
    training_hvgs,
)
from sctrace.harness.benchmark_jobs import peak_rss_mb
from sctrace.harness.benchmark_scoring import TABLE_METRICS, _format_cell, summarise_runs
from sctrace.harness.evaluate import LOWER_IS_BETTER, METRIC_LABELS, lognorm_over_genes, scoring_cells, write_json
from sctrace.harness.experiment_common import (
    _data_label,
    _fit_sctrace,
    _legend,
    _prepare_out_dir,
    _real_tokens,
    _score_prediction,
)
from sctrace.harness.methods import METHOD_REGISTRY, fit_method

# The panels of the extrapolation plot: the paper's Figure 10 shows MMD; EMD, Pearson-delta and E-distance
# say more on log-normalised data (plain Pearson stays near 1 for any method).
DISTANCE_PLOT_METRICS = ("emd", "mmd", "pearson_delta", "e_distance")


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
    genes = training_hvgs(timecourse, train_rows, loaded.data.n_top_genes, loaded.data.genes)
    train_lognorm = lognorm_over_genes(matrix[train_rows], gene_names, genes, count_kind)
    scoring = {float(t): scoring_cells(matrix, times, gene_names, genes, float(t), count_kind,
                                       observed_times=train_times) for t in targets}
    echo(f"extrapolation: training on {train_rows.size} cells at {', '.join(f'{t:g}' for t in train_times)}; "
         f"predicting {', '.join(f'{t:g}' for t in targets)} separately; {len(genes)} HVGs")
    for name, reason in skipped.items():
        echo(f"skipping {name}: {reason}")

    # Every target lies past the training times: the fit calibrates how far past the last one to move.
    fit_sctrace = partial(_fit_sctrace, work / TRAIN_FILE, time_key, genes, count_kind, preset, config, overrides,
                          calibrate_extrapolation=True)
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

    from sctrace.harness.plot_common import _save

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
