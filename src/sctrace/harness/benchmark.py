"""Every method on the same split, scored by the same code (``sctrace benchmark``).

Protocol
--------
- The held-out time's cells (for extrapolation, also every later time's) are removed first. Methods read only
  ``DIR/work/train.h5ad``, which holds the training cells alone; the held-out cells stay in this process and
  are used for nothing but scoring and plots, after every method has finished.
- Genes: the HVGs chosen on the training cells with sctrace's function and ``n_top_genes`` (so they are
  sctrace's own genes, which is checked); every method predicts over them.
- Each method and seed runs in a fresh Python process (multiprocessing ``spawn``), one at a time, so that
  methods share neither memory nor cores. Its wall time covers fitting and predicting (not reading the data
  file); its peak memory is the peak resident set size of that process (Linux ``VmHWM``), which includes
  the interpreter, the imported libraries and the training data, and ``start_mb`` is the same before the
  method started. (``ru_maxrss`` cannot be used: a spawned child inherits its parent's high-water mark.)
- Scoring: :func:`sctrace.harness.metrics.score` of each prediction (as many cells as the held-out time has) against
  the log-normalised held-out cells, with the last training time before it as the reference of
  ``pearson_delta``; ROUGE for sctrace, whose sentences are compared with the held-out cells tokenized by
  the run's gene medians (:func:`sctrace.harness.evaluate.rouge_scores`).
"""

from __future__ import annotations

import importlib
import json
import math
import multiprocessing
import os
import resource
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import anndata as ad
import numpy as np
import scipy.sparse as sp

from sctrace._errors import SctraceInputError
from sctrace._threads import set_threads as _set_threads
from sctrace.config import (
    DEFAULT_LOGNORM_LIKELIHOOD,
    DEFAULT_PRESET,
    LOGNORM_LIKELIHOODS,
    TraceConfig,
    load_config,
)
from sctrace.data.corpus import resolve_task, split_times
from sctrace.data.io import check_holdout, read_timecourse
from sctrace.data.preprocess import (
    chosen_gene_columns,
    log_normalize,
    read_gene_choice,
    select_hvgs,
)
from sctrace.harness.baselines import INTERPOLATION_ONLY
from sctrace.harness.evaluate import (
    METRIC_LABELS,
    lognorm_over_genes,
    rouge_scores,
    run_spec,
    scoring_cells,
)
from sctrace.harness.methods import METHOD_REGISTRY, fit_method

__all__ = ["ABLATIONS", "DEFAULT_METHODS", "METHODS", "TABLE_METRICS", "Variant", "ablation_variants", "benchmark_split", "plot_benchmark",
           "run_benchmark", "summarise_runs"]

# sctrace and every registered floor and peer, in the tables' order.
METHODS = ("sctrace", *METHOD_REGISTRY)
# MIOFlow is asked for by name: it is the slowest peer and an extra install (`sctrace[peers]`).
DEFAULT_METHODS = ("sctrace", "identity", "mixture", "linear", "otcfm")
# Metrics in the results table, in order; ROUGE only exists for sctrace (the others produce no sentences).
TABLE_METRICS = ("mmd", "emd", "e_distance", "pearson", "r2", "pearson_delta", "gene_corr", "c2st_auc", "rouge1_f1")
TRAIN_FILE = "train.h5ad"


@dataclass(frozen=True)
class Variant:
    """One row of the table for sctrace: config overrides for fitting and options for predicting.

    Variants with the same ``fit_overrides`` share one fitted model per seed (only generation differs).
    """

    label: str
    fit_overrides: dict = field(default_factory=dict)
    predict_options: dict = field(default_factory=dict)


# --ablate NAME -> (config key or predict option, values); "length" scales the default generated length. The
# paper's section 5: Table 3 (encoder), Table 4 and Figures 4-5 (schedule, iterations, length), Table 5
# (pos-encoding: learnable rank + sinusoidal time, sinusoidal both, one unified sinusoidal code).
ABLATIONS: dict[str, tuple[str, tuple]] = {
    "schedule": ("mask_schedule", ("cosine", "exponential", "cubic", "linear")),
    "pos-encoding": ("rank_encoding", ("learnable", "sinusoidal", "unified")),
    "iterations": ("n_iter", (1, 5, 20)),
    "length": ("length_factor", (0.5, 1.0, 1.5)),
    "encoder": ("encoder", ("scratch", "random")),
}
_PREDICT_TIME_OPTIONS = ("n_iter", "length_factor")
# Paper Table 3's pretrained rows: only with a local Geneformer-format model (nothing is downloaded).
ENCODER_PATH_HINT = ("the paper's pretrained rows (Geneformer, frozen and fine-tuned) need a local Geneformer-format "
                     "model: pass --encoder-path DIR (config.json, weights, token dictionary, gene medians).")


def ablation_variants(ablate: str | None, encoder_path: str | os.PathLike | None = None) -> list[Variant]:
    """The sctrace rows for an ablation (a single default row without one).

    ``--ablate encoder`` always compares the encoder trained from scratch with the same encoder frozen at its
    random initialisation (what learning to read the source adds); with ``encoder_path`` it adds the paper's
    pretrained Geneformer rows, frozen and fine-tuned.
    """
    if ablate is None:
        if encoder_path is not None:
            raise SctraceInputError("--encoder-path is read by --ablate encoder only; to benchmark sctrace with a "
                                    "pretrained encoder, put `encoder: geneformer` and `encoder_path: DIR` in --config.")
        return [Variant("sctrace")]
    if ablate not in ABLATIONS:
        raise SctraceInputError(f"unknown ablation '{ablate}'; choose one of {', '.join(ABLATIONS)}.")
    if encoder_path is not None and ablate != "encoder":
        raise SctraceInputError(f"--encoder-path is read by --ablate encoder only, not by --ablate {ablate}.")
    key, values = ABLATIONS[ablate]
    variants = []
    for value in values:
        label = f"sctrace[{key}={value:g}x]" if key == "length_factor" else f"sctrace[{key}={value}]"
        if key in _PREDICT_TIME_OPTIONS:
            variants.append(Variant(label, predict_options={key: value}))
        else:
            variants.append(Variant(label, fit_overrides={key: value}))
    if ablate == "encoder" and encoder_path is not None:
        if not Path(encoder_path).is_dir():
            raise SctraceInputError(f"--encoder-path {encoder_path} is not a directory; pass the folder holding the "
                                    "pretrained model's config.json.")
        for mode in ("frozen", "finetune"):
            variants.append(Variant(f"sctrace[encoder=geneformer-{mode}]", fit_overrides={
                "encoder": "geneformer", "encoder_path": str(Path(encoder_path).resolve()), "encoder_mode": mode}))
    return variants


# ----------------------------------------------------------------------------------------------------------------
# child process: one method, one seed
# ----------------------------------------------------------------------------------------------------------------


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MB: ``VmHWM`` on Linux, ``ru_maxrss`` elsewhere."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def _run_job(job: dict) -> list[dict]:
    """Fit one method on the training file and predict the target time; runs in a spawned child process.

    Writes each variant's (n_cells, n_genes) log-normalised prediction (for sctrace also its counts and token
    sentences) to an ``.npz`` and returns one record per variant with timings and memory.
    """
    _set_threads(job["threads"], torch_too=job["method"] == "sctrace" or METHOD_REGISTRY[job["method"]].uses_torch)
    train = ad.read_h5ad(job["train_path"])
    times = train.obs[job["time_key"]].to_numpy(dtype=np.float64)
    start_mb = peak_rss_mb()
    started = time.perf_counter()
    method, seed, target, n_cells = job["method"], job["seed"], job["target_time"], job["n_cells"]
    outputs = []  # (label, predict seconds, arrays)
    if method == "sctrace":
        from sctrace.estimator import TRACE

        options = job["sctrace"]
        model = TRACE(train, job["time_key"], task="none", count_kind=job["count_kind"], preset=options["preset"],
                      config=options["config"], seed=seed, **options["overrides"])
        if list(model.spec.genes) != list(job["genes"]):
            raise RuntimeError("sctrace chose other genes than the benchmark; the two HVG selections have diverged.")
        model.fit(run_dir=options["run_dir"], overwrite=True, progress=False)
        fit_seconds = time.perf_counter() - started
        for variant in job["variants"]:
            predict_started = time.perf_counter()
            predict = dict(variant["predict_options"])
            factor = predict.pop("length_factor", None)
            if factor is not None:
                predict["length"] = max(1, round(factor * model.spec.default_length(target)))
            generated = model.predict(target, n_cells=n_cells, seed=seed, **predict)
            expression = lognorm_over_genes(generated.X, generated.var_names, job["genes"], job["count_kind"])
            arrays = {"expression": expression.toarray(), "counts": sp.csr_matrix(generated.X).toarray(),
                      "tokens": generated.obsm["sctrace_tokens"]}
            outputs.append((variant["label"], time.perf_counter() - predict_started, arrays))
    else:
        expression = lognorm_over_genes(train.X, train.var_names, job["genes"], job["count_kind"])
        predict = fit_method(method, expression, times, seed, job.get(method) or {})
        cells = predict(target, n_cells)
        fit_seconds = 0.0  # the baselines and the peer fit and predict in one call, timed as prediction
        outputs.append((job["variants"][0]["label"], time.perf_counter() - started, {"expression": cells}))
    records = []
    for label, predict_seconds, arrays in outputs:
        path = Path(job["predictions_dir"]) / f"{_file_label(label)}_seed{seed}.npz"
        np.savez_compressed(path, **arrays)
        records.append({"label": label, "seed": seed, "prediction": str(path), "fit_s": fit_seconds,
                        "predict_s": predict_seconds, "wall_s": fit_seconds + predict_seconds,
                        "start_mb": start_mb, "peak_mb": peak_rss_mb(),
                        "run_dir": job.get("sctrace", {}).get("run_dir")})
    return records


def _file_label(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in label).strip("_")


# ----------------------------------------------------------------------------------------------------------------
# parent: split, run, score, write
# ----------------------------------------------------------------------------------------------------------------


def summarise_runs(runs: Sequence[dict], keys: Sequence[str]) -> tuple[dict, dict]:
    """Mean and sample standard deviation (ddof=1; NaN for one run) of each key over runs that have it."""
    mean, sd = {}, {}
    for key in keys:
        values = np.array([run[key] for run in runs if key in run and run[key] is not None], dtype=np.float64)
        if values.size == 0:
            continue
        mean[key] = float(np.mean(values))
        sd[key] = float(np.std(values, ddof=1)) if values.size > 1 else float("nan")
    return mean, sd


def _format_cell(mean: dict, sd: dict, key: str, digits: int = 4) -> str:
    if key not in mean or math.isnan(mean[key]):
        return "-"
    text = f"{mean[key]:.{digits}f}"
    if not math.isnan(sd.get(key, float("nan"))):
        text += f" ± {sd[key]:.{digits}f}"
    return text


def results_markdown(results: dict) -> str:
    """The results table: one row per method, mean ± sd over seeds."""
    columns = [*TABLE_METRICS, "wall_s", "peak_mb"]
    labels = [METRIC_LABELS[c] for c in TABLE_METRICS] + ["wall s", "peak MB"]
    lines = [
        f"# Benchmark: {results['task']} at time {results['holdout']:g}",
        "",
        f"Data: {results['data']} ({results['n_real']} held-out cells, {results['n_genes']} HVGs chosen on the "
        f"training times {', '.join(f'{t:g}' for t in results['train_times'])}); seeds "
        f"{', '.join(map(str, results['seeds']))}; reference time for Pearson-delta: "
        f"{'-' if results['reference_time'] is None else format(results['reference_time'], 'g')}.",
        "",
        "| method | " + " | ".join(labels) + " |",
        "|---|" + "---|" * len(labels),
    ]
    for name, entry in results["methods"].items():
        if entry.get("failed"):
            lines.append(f"| {name} | failed: {entry['failed']} |" + " |" * (len(labels) - 1))
            continue
        cells = [_format_cell(entry["mean"], entry["sd"], key, 1 if key in ("wall_s", "peak_mb") else 4)
                 for key in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "MMD, EMD, E-distance: lower is better; PearsonR, R², Pearson-delta, gene-gene r, ROUGE-1 F1: higher is "
        "better. gene-gene r: how alike the gene-gene correlations of generated and real cells are (100 most "
        "variable real genes), which no other column sees. C2ST AUC: how well a kNN classifier on the real cells' "
        "PCA tells generated from real cells (cross-validated; 0.5: not at all, the best). "
        "Values are mean ± sample sd over seeds, computed on log-normalised expression over the HVGs.",
        f"wall s: fitting and predicting one seed. peak MB: {results['memory_measure']}.",
    ]
    starts = [run["start_mb"] for entry in results["methods"].values() for run in entry["runs"]]
    if starts:
        lines.append(f"Before its method started, each process held {min(starts):.0f}-{max(starts):.0f} MB (Python, "
                     "numpy, scanpy, anndata and the training data, plus torch for sctrace and the peers).")
    lines += [f"- {name}: skipped, {reason}" for name, reason in results["skipped"].items()]
    lines += [f"- {note}" for note in results["notes"]]
    return "\n".join(lines) + "\n"


def _check_methods(methods: Sequence[str], seeds: Sequence[int]) -> tuple[list[str], list[int]]:
    methods = [m.strip() for m in methods if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise SctraceInputError(f"unknown method(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(METHODS)}.")
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise SctraceInputError("no seed given; pass at least one (CLI: --seeds 0,1,2).")
    return list(dict.fromkeys(methods)), list(dict.fromkeys(seeds))


def _write_training_file(timecourse, train_rows: np.ndarray, path: Path) -> None:
    """The only data file the methods read: training cells, every gene, numeric time column."""
    matrix = timecourse.expression()[train_rows]
    obs = timecourse.adata.obs.iloc[train_rows].copy()
    obs[timecourse.time_key] = timecourse.times[train_rows]
    train = ad.AnnData(sp.csr_matrix(matrix), obs=obs)
    train.var_names = timecourse.gene_names()
    path.parent.mkdir(parents=True, exist_ok=True)
    train.write_h5ad(path)


def training_hvgs(timecourse, train_rows: np.ndarray, n_top_genes: int, genes: str = "hvg") -> list[str]:
    """The modelled genes of the training cells (HVGs by default), chosen as
    :func:`sctrace.data.corpus.prepare_corpus` chooses them (``genes``: hvg | all | a gene file)."""
    gene_names = timecourse.gene_names()
    train_lognorm = log_normalize(sp.csr_matrix(timecourse.expression()[train_rows]), timecourse.count_kind)
    columns = chosen_gene_columns(gene_names, read_gene_choice(genes),
                                  lambda n: select_hvgs(train_lognorm, gene_names, n), n_top_genes)
    return gene_names[columns].tolist()


def sctrace_options(preset: str, config, max_epochs: int | None, count_kind: str,
                     overrides: dict | None) -> tuple[dict, TraceConfig]:
    """Config overrides for TRACE (checked now, before any work) and the config they give (its genes)."""
    overrides = {**(overrides or {}), **({"max_epochs": max_epochs} if max_epochs is not None else {})}
    loaded = load_config(preset, config, **overrides)
    # Log-normalised data need a likelihood of log-normalised values; one the caller, the preset or --config
    # names is kept, and one that does not fit the data is refused below.
    if count_kind == "lognorm" and "likelihood" not in overrides and loaded.likelihood not in LOGNORM_LIKELIHOODS:
        overrides["likelihood"] = DEFAULT_LOGNORM_LIKELIHOOD
        loaded = load_config(preset, config, **overrides)
    if (loaded.likelihood in LOGNORM_LIKELIHOODS) != (count_kind == "lognorm"):
        raise SctraceInputError(
            f"likelihood '{loaded.likelihood}' does not fit --count-kind {count_kind}: raw counts take zinb or nb, "
            f"log-normalised values ({', '.join(LOGNORM_LIKELIHOODS)})."
        )
    return overrides, loaded


def run_benchmark(
    data: ad.AnnData | str | os.PathLike,
    time_key: str = "time",
    *,
    task: str = "interpolate",
    holdout: float | str,
    out_dir: str | os.PathLike,
    methods: Sequence[str] = DEFAULT_METHODS,
    seeds: Sequence[int] = (0, 1, 2),
    preset: str = DEFAULT_PRESET,
    config: str | os.PathLike | None = None,
    max_epochs: int | None = None,
    count_kind: str = "counts",
    layer: str | None = None,
    ablate: str | None = None,
    encoder_path: str | os.PathLike | None = None,
    sctrace_overrides: dict | None = None,
    otcfm_settings: dict | None = None,
    mioflow_settings: dict | None = None,
    threads: int = 1,
    overwrite: bool = False,
    plots: bool = True,
    embedding_layout: str = "umap",
    echo: Callable[[str], None] = print,
) -> dict:
    """Run the methods on one split, score them on the held-out cells and write ``results.json`` / ``.md``.

    Parameters
    ----------
    data
        AnnData or .h5ad path with raw counts (or log-normalised values with ``count_kind='lognorm'``).
    time_key
        obs column with the time.
    task, holdout
        ``interpolate`` or ``extrapolate`` and the held-out time.
    out_dir
        Output folder: ``results.json``, ``results.md``, ``plots/``, ``runs/`` (sctrace run directories),
        ``work/`` (the training file and the predictions).
    methods
        Any of :data:`METHODS` (default :data:`DEFAULT_METHODS`). ``linear`` and ``mixture`` are skipped for extrapolation, ``otcfm`` when torchcfm is not
        installed and ``mioflow`` when mioflow is not, each with a note.
    seeds
        One run of every method per seed.
    preset, config, max_epochs, sctrace_overrides
        sctrace's hyper-parameters (``sctrace_overrides`` are config keys applied last).
    count_kind, layer
        What the expression holds, and where (default ``X``).
    ablate
        One of :data:`ABLATIONS`: sctrace is run once per value instead of once.
    encoder_path
        A local Geneformer-format model for ``ablate="encoder"``'s pretrained rows (see :func:`ablation_variants`).
    otcfm_settings
        Fields of :class:`sctrace.harness.peers.otcfm.OTCFMSettings`.
    mioflow_settings
        Fields of :class:`sctrace.harness.peers.mioflow.MIOFlowSettings`.
    threads
        torch/BLAS threads of each child process.
    overwrite
        Replace the results of an earlier benchmark in ``out_dir``.
    plots
        Write the plots to ``out_dir/plots``.
    embedding_layout
        ``umap`` or ``pca`` for the map of sctrace's cell embeddings (UMAP compiles for ~30 s on first use).
    echo
        Where progress lines go.

    Returns
    -------
    dict
        What ``results.json`` holds.
    """
    methods, seeds = _check_methods(methods, seeds)
    if task not in ("auto", "interpolate", "extrapolate"):
        raise SctraceInputError(f"unknown benchmark task '{task}'; choose auto, interpolate or extrapolate.")
    variants = ablation_variants(ablate, encoder_path)
    otcfm_resolved = _peer_settings("otcfm", otcfm_settings, methods)
    mioflow_resolved = _peer_settings("mioflow", mioflow_settings, methods)
    if ablate is not None and "sctrace" not in methods:
        raise SctraceInputError("--ablate varies sctrace, but sctrace is not among the methods; add it to --methods.")
    out_dir = Path(out_dir)
    if (out_dir / "results.json").exists() and not overwrite:
        raise SctraceInputError(f"{out_dir} already holds benchmark results; pass --overwrite or choose another --out.")

    timecourse = read_timecourse(data, time_key, layer=layer, count_kind=count_kind)
    holdout = check_holdout(timecourse, holdout)
    task, holdout = resolve_task(timecourse.time_values, task, holdout)
    train_times, _ = split_times(timecourse.time_values, task, holdout)
    overrides, loaded = sctrace_options(preset, config, max_epochs, count_kind, sctrace_overrides)
    for variant in variants:
        load_config(preset, config, **overrides, **variant.fit_overrides)

    matrix, gene_names = timecourse.expression(), timecourse.gene_names()
    train_rows = np.flatnonzero(np.isin(timecourse.times, train_times))
    genes = training_hvgs(timecourse, train_rows, loaded.n_top_genes, loaded.genes)
    cells = scoring_cells(matrix, timecourse.times, gene_names, genes, holdout, count_kind, observed_times=train_times)
    n_real = cells.real.shape[0]
    work = out_dir / "work"
    predictions_dir = work / "predictions"
    predictions_dir.mkdir(parents=True, exist_ok=True)
    _write_training_file(timecourse, train_rows, work / TRAIN_FILE)
    echo(f"{task} at {holdout:g}: {len(train_rows)} training cells at {', '.join(f'{t:g}' for t in train_times)}; "
         f"{n_real} held-out cells; {len(genes)} HVGs")

    if ablate == "encoder" and encoder_path is None:
        echo(f"note: {ENCODER_PATH_HINT}")
    skipped, jobs = {}, []
    base = {"train_path": str(work / TRAIN_FILE), "time_key": time_key, "target_time": holdout, "genes": genes,
            "n_cells": n_real, "count_kind": count_kind, "threads": threads, "predictions_dir": str(predictions_dir)}
    for method in methods:
        if method in INTERPOLATION_ONLY and task == "extrapolate":
            skipped[method] = f"the {method} baseline only interpolates between two observed time points."
            continue
        if method == "otcfm":
            from sctrace.harness.peers import OTCFM_INSTALL_HINT, otcfm_available

            if not otcfm_available():
                skipped[method] = f"torchcfm is not installed (`{OTCFM_INSTALL_HINT}`)."
                continue
        if method == "mioflow":
            from sctrace.harness.peers import MIOFLOW_INSTALL_HINT, mioflow_available

            if not mioflow_available():
                skipped[method] = f"mioflow is not installed (`{MIOFLOW_INSTALL_HINT}`)."
                continue
        for seed in seeds:
            if method != "sctrace":
                jobs.append({**base, "method": method, "seed": seed, "variants": [{"label": method, "predict_options": {}}],
                             "otcfm": otcfm_resolved or {}, "mioflow": mioflow_resolved or {}})
                continue
            for fit_key, group in _group_by_fit(variants).items():
                run_name = _file_label(group[0].label if fit_key else "sctrace")
                jobs.append({**base, "method": method, "seed": seed,
                             "variants": [{"label": v.label, "predict_options": v.predict_options} for v in group],
                             "sctrace": {"preset": preset, "config": None if config is None else str(config),
                                         "overrides": {**overrides, **group[0].fit_overrides},
                                         "run_dir": str(out_dir / "runs" / f"{run_name}_seed{seed}")}})
    for name, reason in skipped.items():
        echo(f"skipping {name}: {reason}")

    records, failures = _run_jobs(jobs, echo)
    results = _score_records(records, failures, cells, matrix, gene_names, seeds)
    results.update({
        "data": str(data) if not isinstance(data, ad.AnnData) else "AnnData (in memory)", "layer": layer,
        "time_key": time_key, "task": task, "holdout": holdout, "train_times": [float(t) for t in train_times],
        "reference_time": cells.reference_time, "n_real": n_real, "n_genes": len(genes), "genes": genes,
        "seeds": seeds, "count_kind": count_kind, "preset": preset, "config": None if config is None else str(config),
        "sctrace_overrides": overrides, "ablate": ablate,
        "encoder_path": None if encoder_path is None else str(encoder_path), "otcfm_settings": otcfm_resolved,
        "mioflow_settings": mioflow_resolved, "skipped": skipped,
        "memory_measure": "peak resident set size (VmHWM) of the fresh process that ran one seed of the method, "
                          "including Python, its libraries and the training data",
        "notes": ["Every method saw only the training cells (work/train.h5ad); the held-out cells were used only "
                  "for scoring and plots."],
    })
    if ablate == "encoder" and encoder_path is None:
        results["notes"].append(f"--ablate encoder without --encoder-path: {ENCODER_PATH_HINT}")
    if "sctrace" in methods and any(len(g) > 1 for g in _group_by_fit(variants).values()):
        results["notes"].append("The ablation's variants share one fitted model per seed; each row's wall s is that "
                                "fit plus its own generation, and peak MB is that of the shared process.")
    (out_dir / "results.json").write_text(json.dumps(results, indent=1, default=float))
    (out_dir / "results.md").write_text(results_markdown(results))
    echo(results_markdown(results))
    if plots and records:
        written = _benchmark_plots(out_dir / "plots", results, records, cells, timecourse, genes, embedding_layout)
        echo(f"wrote {out_dir / 'results.md'}, {out_dir / 'results.json'} and {len(written)} plots in {out_dir / 'plots'}")
    return results


# A peer's settings class: (module, class name, the peer's name in messages).
_PEER_SETTINGS = {
    "otcfm": ("sctrace.harness.peers.otcfm", "OTCFMSettings", "OT-CFM"),
    "mioflow": ("sctrace.harness.peers.mioflow", "MIOFlowSettings", "MIOFlow"),
}


def _peer_settings(peer: str, settings: dict | None, methods: Sequence[str]) -> dict | None:
    """Every hyper-parameter of ``peer`` (defaults filled in), checked here rather than in a child process;
    None when the peer is not among ``methods``."""
    if peer not in methods:
        return None
    module, class_name, label = _PEER_SETTINGS[peer]
    settings_class = getattr(importlib.import_module(module), class_name)
    try:
        return asdict(settings_class(**(settings or {})))
    except TypeError as err:
        raise SctraceInputError(f"bad {label} settings ({err}); use fields of {class_name}.") from err


def _group_by_fit(variants: Sequence[Variant]) -> dict[tuple, list[Variant]]:
    groups: dict[tuple, list[Variant]] = {}
    for variant in variants:
        groups.setdefault(tuple(sorted(variant.fit_overrides.items())), []).append(variant)
    return groups


def _run_jobs(jobs: list[dict], echo: Callable[[str], None]) -> tuple[list[dict], dict[str, str]]:
    """Run each job in its own fresh spawned process, one after the other."""
    records, failures = [], {}
    context = multiprocessing.get_context("spawn")
    for job in jobs:
        labels = ", ".join(v["label"] for v in job["variants"])
        try:
            with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
                job_records = pool.submit(_run_job, job).result()
        except Exception as err:  # a failing method is reported in the table, the others still run
            for variant in job["variants"]:
                failures[variant["label"]] = f"{type(err).__name__}: {err}"
            echo(f"[{labels} seed {job['seed']}] failed: {type(err).__name__}: {err}")
            continue
        for record in job_records:
            echo(f"[{record['label']} seed {record['seed']}] {record['wall_s']:.1f} s, peak {record['peak_mb']:.0f} MB")
        records.extend(job_records)
    return records, failures


def _score_records(records: list[dict], failures: dict[str, str], cells, matrix, gene_names, seeds) -> dict:
    """Score every prediction on the held-out cells and summarise each method over seeds."""
    from sctrace.data.corpus import tokenize_with_spec
    from sctrace.harness.metrics import score

    real_tokens_by_run: dict[str, np.ndarray] = {}
    methods: dict[str, dict] = {}
    for record in records:
        arrays = np.load(record["prediction"])
        metrics = score(arrays["expression"], cells.real, reference=cells.reference, seed=record["seed"])
        if "tokens" in arrays:
            run_dir = record["run_dir"]
            if run_dir not in real_tokens_by_run:
                real_tokens_by_run[run_dir] = tokenize_with_spec(run_spec(run_dir), matrix[cells.real_rows], gene_names)[0]
            metrics.update(rouge_scores(arrays["tokens"], real_tokens_by_run[run_dir], seed=record["seed"]))
        run = {"seed": record["seed"], **metrics,
               **{k: record[k] for k in ("wall_s", "fit_s", "predict_s", "start_mb", "peak_mb")}}
        methods.setdefault(record["label"], {"runs": []})["runs"].append(run)
    for label, error in failures.items():
        methods.setdefault(label, {"runs": []})["failed"] = error
    keys = [*METRIC_LABELS, "rouge1_precision", "rouge1_recall", "wall_s", "fit_s", "predict_s", "start_mb", "peak_mb"]
    for entry in methods.values():
        entry["mean"], entry["sd"] = summarise_runs(entry["runs"], keys)
    return {"methods": methods}


def benchmark_split(bench_dir: str | os.PathLike, data: str | os.PathLike | ad.AnnData | None = None):
    """A finished benchmark's ``results.json``, its data and the cells it scored: ``(results, timecourse, cells)``.

    Re-reads the split exactly as the benchmark made it (same genes, held-out time and reference time), so that
    plots and diagnostics made later score against the same cells. ``data`` replaces the path in ``results.json``.
    """
    bench_dir = Path(bench_dir)
    if not (bench_dir / "results.json").exists():
        raise SctraceInputError(f"{bench_dir} holds no results.json; pass the --out folder of `sctrace benchmark`.")
    results = json.loads((bench_dir / "results.json").read_text())
    source = data if data is not None else results["data"]
    if not isinstance(source, ad.AnnData) and not Path(source).exists():
        raise SctraceInputError(f"the benchmark's data {source} is not there; pass the data file as DATA.")
    timecourse = read_timecourse(source, results["time_key"], layer=results.get("layer"), count_kind=results["count_kind"])
    cells = scoring_cells(timecourse.expression(), timecourse.times, timecourse.gene_names(), results["genes"],
                          results["holdout"], results["count_kind"], observed_times=results["train_times"])
    return results, timecourse, cells


def plot_benchmark(bench_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None, *,
                   data: str | os.PathLike | ad.AnnData | None = None, layout: str = "umap") -> list[Path]:
    """Draw a finished benchmark's plots again from its saved predictions (``sctrace plot BENCH_DIR``).

    Why: benchmarks of several seeds are often run with ``--no-plots``; the first seed's predictions, the sctrace
    run and the split are all in ``bench_dir``, so the plots need no refit. ``data`` replaces the data path in
    ``results.json`` (for a moved file or an in-memory benchmark); ``out_dir`` defaults to ``bench_dir/plots``.
    """
    bench_dir = Path(bench_dir)
    results, timecourse, cells = benchmark_split(bench_dir, data)
    genes = results["genes"]
    seed, records = results["seeds"][0], []
    for label, entry in results["methods"].items():
        prediction = bench_dir / "work" / "predictions" / f"{_file_label(label)}_seed{seed}.npz"
        if entry.get("failed") or not prediction.exists():
            continue
        run_dir = None
        if label.startswith("sctrace"):
            candidates = [bench_dir / "runs" / f"{name}_seed{seed}" for name in (_file_label(label), "sctrace")]
            run_dir = next((str(c) for c in candidates if (c / "model.safetensors").exists()), None)
        records.append({"label": label, "seed": seed, "prediction": str(prediction), "run_dir": run_dir})
    if not records:
        raise SctraceInputError(f"{bench_dir / 'work' / 'predictions'} holds no prediction of seed {seed}; the benchmark's "
                                "work folder was removed or the run did not finish.")
    plot_dir = Path(out_dir) if out_dir is not None else bench_dir / "plots"
    return _benchmark_plots(plot_dir, results, records, cells, timecourse, genes, layout)


def _benchmark_plots(plot_dir: Path, results: dict, records: list[dict], cells, timecourse, genes, layout: str) -> list[Path]:
    """Plots of the first seed's predictions (see :func:`sctrace.harness.plots.prediction_plots`)."""
    from sctrace.harness.plots import (
        EmbeddingView,
        cell_type_labels,
        nearest_labels,
        prediction_plots,
    )

    first_seed = results["seeds"][0]
    predictions, sctrace_record = {}, None
    for record in records:
        if record["seed"] == first_seed:
            predictions[record["label"]] = np.load(record["prediction"])["expression"]
            if sctrace_record is None and record["run_dir"] is not None:
                sctrace_record = record
    all_lognorm = lognorm_over_genes(timecourse.expression(), timecourse.gene_names(), genes, timecourse.count_kind)
    cell_types = cell_type_labels(timecourse.adata.obs)
    real_types = None if cell_types is None else cell_types[cells.real_rows]
    embedding = None
    if sctrace_record is not None:
        arrays = np.load(sctrace_record["prediction"])
        generated_types = None if real_types is None else nearest_labels(cells.real, real_types, arrays["expression"])
        embedding = EmbeddingView.from_run(sctrace_record["run_dir"], arrays["counts"], arrays["expression"], cells.time,
                                           timecourse, generated_types)
    return prediction_plots(plot_dir, cells.real, predictions, genes, cells.time, all_lognorm, timecourse.times,
                            real_cell_types=real_types, embedding=embedding, layout=layout)

