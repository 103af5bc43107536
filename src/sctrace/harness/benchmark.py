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
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import anndata as ad
import numpy as np
import scipy.sparse as sp

from sctrace._errors import SctraceInputError
from sctrace.config import DEFAULT_PRESET, LOGNORM_LIKELIHOODS, TraceConfig, load_config
from sctrace.data.corpus import resolve_task, split_times
from sctrace.data.io import check_holdout, read_h5ad, read_timecourse, resolve_count_kind
from sctrace.data.preprocess import chosen_gene_columns, log_normalize, read_gene_choice, select_hvgs
from sctrace.harness.baselines import INTERPOLATION_ONLY
from sctrace.harness.benchmark_jobs import (
    _file_label,
    _run_jobs,
    peak_rss_mb,  # noqa: F401 (public here: tests and benchmarks/memory.py)
)
from sctrace.harness.benchmark_plots import _benchmark_plots, benchmark_split, plot_benchmark
from sctrace.harness.benchmark_scoring import TABLE_METRICS, _score_records, results_markdown, summarise_runs
from sctrace.harness.evaluate import scoring_cells
from sctrace.harness.methods import METHOD_REGISTRY

__all__ = ["ABLATIONS", "DEFAULT_METHODS", "METHODS", "TABLE_METRICS", "Variant", "ablation_variants", "benchmark_split", "plot_benchmark",
           "run_benchmark", "summarise_runs"]

# sctrace and every registered floor and peer, in the tables' order.
METHODS = ("sctrace", *METHOD_REGISTRY)
# MIOFlow is asked for by name: it is the slowest peer and an extra install (`sctrace[peers]`).
DEFAULT_METHODS = ("sctrace", "identity", "mixture", "linear", "otcfm")
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
# parent: split, run, score, write
# ----------------------------------------------------------------------------------------------------------------


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
    # "auto" (the default) becomes the likelihood of the data's kind when TRACE reads them; one the caller, the
    # preset or --config names must fit the data.
    if loaded.counts.likelihood != "auto" and (loaded.counts.likelihood in LOGNORM_LIKELIHOODS) != (count_kind == "lognorm"):
        raise SctraceInputError(
            f"likelihood '{loaded.counts.likelihood}' does not fit --count-kind {count_kind}: raw counts take zinb or nb, "
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
    count_kind: str = "auto",
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

    source = data
    if count_kind in (None, "auto"):  # read from the values, once (the results keep the path given)
        source = data if isinstance(data, ad.AnnData) else read_h5ad(data)
        count_kind, _ = resolve_count_kind(source, layer, "auto", "auto")
    timecourse = read_timecourse(source, time_key, layer=layer, count_kind=count_kind)
    task, resolved = resolve_task(timecourse.time_values, task, check_holdout(timecourse, holdout))
    assert resolved is not None  # a given held-out time stays held out
    holdout = resolved
    train_times, _ = split_times(timecourse.time_values, task, holdout)
    overrides, loaded = sctrace_options(preset, config, max_epochs, count_kind, sctrace_overrides)
    for variant in variants:
        load_config(preset, config, **overrides, **variant.fit_overrides)

    matrix, gene_names = timecourse.expression(), timecourse.gene_names()
    train_rows = np.flatnonzero(np.isin(timecourse.times, train_times))
    genes = training_hvgs(timecourse, train_rows, loaded.data.n_top_genes, loaded.data.genes)
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
