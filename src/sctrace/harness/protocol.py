"""The leave-one-time-out protocol (``sctrace protocol``): every observed time of a course, held out in turn.

Why: a model tuned on one held-out time can win there and lose everywhere else. The protocol holds out every
interior observed time as an interpolation task and the last one as an extrapolation task, runs each method on
each split with :func:`sctrace.harness.benchmark.run_benchmark` (the same code, the same cells, every held-out cell kept
out of fitting), and writes one summary:

- a row per split x method: EMD, MMD, Pearson-delta, gene-gene r, wall time, mean over seeds;
- a win table: on how many splits sctrace beats each other method on EMD and on Pearson-delta;
- the "does not snap" check: the distance of each prediction's mean to the held-out truth's mean and to every
  observed training time's mean; a prediction whose mean lies nearer a training time than the truth has copied
  that time instead of moving between its neighbours.

Each split x method is its own benchmark folder (``OUT/splits/<task>-<time>/<method>/``), so a protocol run that
is stopped keeps every finished one and starts where it stopped; ``rerun`` re-fits chosen methods (e.g. sctrace
after a change, against peers already run).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import anndata as ad
import numpy as np
import scipy.sparse as sp

from sctrace._errors import SctraceInputError
from sctrace.data.io import detect_count_kind, read_h5ad, read_timecourse
from sctrace.harness.benchmark import INTERPOLATION_ONLY, METHODS, run_benchmark, sctrace_options, training_hvgs
from sctrace.harness.benchmark_jobs import _file_label
from sctrace.harness.evaluate import lognorm_over_genes

__all__ = ["PROFILES", "protocol_markdown", "protocol_splits", "run_protocol", "summarise_protocol"]

# What the protocol's summary reports, in order (lower is better for the first two).
SUMMARY_METRICS = ("emd", "mmd", "pearson_delta", "gene_corr", "c2st_auc", "gene_corr_iid", "c2st_auc_iid")
DEFAULT_PROTOCOL_METHODS = ("sctrace", "identity", "mixture", "linear", "otcfm", "mioflow")


# Seeds of each profile. quick: one seed, for iterating on a change; full: three seeds, for the record
# (BENCHMARKS.md). Budgets are each method's own unless given (max_epochs, otcfm_steps, mioflow_epochs).
PROFILES: dict[str, tuple[int, ...]] = {"quick": (0,), "full": (0, 1, 2)}


def protocol_splits(time_values: Sequence[float] | np.ndarray,
                    times: Sequence[float] | None = None) -> list[tuple[str, float]]:
    """``(task, held-out time)`` of every split: each interior observed time interpolated, the last extrapolated.

    ``times`` keeps only the splits at those time values (for a quick look at one or two).
    """
    values = sorted(float(t) for t in time_values)
    if len(values) < 3:
        raise SctraceInputError(f"the leave-one-time-out protocol needs at least 3 observed times, the data have "
                                f"{len(values)}; use `sctrace benchmark` with --holdout for a single split.")
    splits = [("interpolate", t) for t in values[1:-1]] + [("extrapolate", values[-1])]
    if times is None:
        return splits
    wanted = [float(t) for t in times]
    unknown = [t for t in wanted if not any(math.isclose(t, s) for _, s in splits)]
    if unknown:
        raise SctraceInputError(f"--times {', '.join(f'{t:g}' for t in unknown)} is not a split of the protocol; choose "
                                f"among {', '.join(f'{s:g}' for _, s in splits)} (the first time is never held out).")
    return [(task, t) for task, t in splits if any(math.isclose(t, w) for w in wanted)]


def _split_name(task: str, time: float) -> str:
    return f"{task}-{time:g}"


def _prepared_data(data, time_key: str, layer: str | None, count_kind: str, work: Path, echo) -> tuple[object, str, str]:
    """The data every split reads and its kind: ``values`` (FPKM, TPM) become log1p(values), read as log-normalised.

    Why log1p and not depth normalisation: FPKM and TPM are already scaled per cell; log1p is how such values are
    read by the field's tools (Monocle's log(FPKM + 1)). The transformed copy lives in the protocol's work folder.
    """
    # Read backed for the detection (the values are scanned a block at a time), whole only to write log1p.
    source = data if isinstance(data, ad.AnnData) else read_h5ad(data, backed=layer is None)
    matrix = source.X if layer is None else source.layers[layer]
    kind = detect_count_kind(matrix) if count_kind == "auto" else count_kind
    if source.isbacked:
        if kind != "values":
            source.file.close()
            return data, kind, kind
        source = source.to_memory()
        matrix = source.X
    if kind != "values":
        return data, kind, kind
    path = work / "log1p_values.h5ad"
    if not path.exists():
        logged = ad.AnnData(sp.csr_matrix(matrix, dtype=np.float32).log1p(), obs=source.obs.copy(), var=source.var.copy())
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        logged.write_h5ad(tmp)
        tmp.replace(path)
    echo("the values are neither counts nor log-normalised (e.g. FPKM or TPM): every method reads log1p(values)")
    return str(path), "lognorm", "values"


def run_protocol(
    data: ad.AnnData | str | os.PathLike,
    time_key: str = "time",
    *,
    out_dir: str | os.PathLike,
    methods: Sequence[str] = DEFAULT_PROTOCOL_METHODS,
    profile: str = "quick",
    seeds: Sequence[int] | None = None,
    times: Sequence[float] | None = None,
    rerun: Sequence[str] = (),
    count_kind: str = "auto",
    layer: str | None = None,
    preset: str = "cpu-small",
    config: str | os.PathLike | None = None,
    max_epochs: int | None = None,
    otcfm_steps: int | None = None,
    mioflow_epochs: int | None = None,
    sctrace_overrides: dict | None = None,
    threads: int = 1,
    run: bool = True,
    echo: Callable[[str], None] = print,
) -> dict:
    """Run every split of the protocol for ``methods`` and write ``OUT/protocol.json`` and ``OUT/protocol.md``.

    Parameters
    ----------
    data, time_key, layer
        The time course (.h5ad path or AnnData), its time column and the layer holding the expression.
    out_dir
        Output folder; finished splits in it are kept and not run again (resumable).
    methods
        Any of :data:`sctrace.harness.benchmark.METHODS`.
    profile
        ``quick`` (seed 0) or ``full`` (seeds 0, 1, 2); ``seeds`` overrides it.
    times
        Only the splits holding out these times (default: every split).
    rerun
        Methods whose finished splits are fitted again (e.g. ``["sctrace"]`` after a change to the model).
    count_kind
        ``auto`` (integers: counts; values up to 50: log-normalised; larger non-integers: FPKM-like values, read
        as log1p), or ``counts``, ``lognorm``, ``values``.
    preset, config, max_epochs, otcfm_steps, mioflow_epochs
        Hyper-parameters and budgets (``None``: each method's default).
    sctrace_overrides
        sctrace config keys applied last (as :func:`sctrace.harness.benchmark.run_benchmark` takes them).
    threads
        torch/BLAS threads of each method's process.
    run
        False: fit nothing, summarise the splits already finished in ``out_dir`` (e.g. while a run goes on).
    """
    if profile not in PROFILES:
        raise SctraceInputError(f"unknown protocol profile '{profile}'; choose one of {', '.join(PROFILES)}.")
    if count_kind not in ("auto", "counts", "lognorm", "values"):
        raise SctraceInputError(f"unknown --count-kind '{count_kind}'; choose auto, counts, lognorm or values.")
    methods = [m for m in dict.fromkeys(m.strip() for m in methods) if m]
    unknown = [m for m in [*methods, *rerun] if m not in METHODS]
    if unknown or not methods:
        raise SctraceInputError(f"unknown method(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(METHODS)}.")
    seeds = list(PROFILES[profile] if seeds is None else seeds)
    budgets = {"max_epochs": max_epochs, "otcfm_steps": otcfm_steps, "mioflow_epochs": mioflow_epochs}
    out_dir = Path(out_dir)
    work = out_dir / "work"
    source, kind, detected = _prepared_data(data, time_key, layer, count_kind, work, echo)
    source_layer = layer if source is data else None  # a log1p copy holds its values in X
    timecourse = read_timecourse(source, time_key, layer=source_layer, count_kind=kind)
    splits = protocol_splits(timecourse.time_values, times)
    echo(f"protocol ({profile}, seeds {', '.join(map(str, seeds))}): {len(splits)} splits x {len(methods)} methods; "
         f"data read as {detected}")
    for task, time in splits if run else ():
        with _split_lock(out_dir / "splits" / _split_name(task, time)):
            genes_now: list[str] | None = None
            for method in methods:
                if method in INTERPOLATION_ONLY and task == "extrapolate":
                    continue
                folder = out_dir / "splits" / _split_name(task, time) / method
                if (folder / "results.json").exists() and method not in rerun:
                    if genes_now is None:
                        genes_now = _split_genes(timecourse, time, preset, config, max_epochs, kind, sctrace_overrides)
                    if _kept_genes(folder) == genes_now:
                        echo(f"[{_split_name(task, time)} {method}] kept from an earlier run")
                        continue
                    # Scored over other genes (another gene choice or sctrace version): its scores and its cells'
                    # means would not compare with today's, so it runs again.
                    echo(f"[{_split_name(task, time)} {method}] earlier run scored other genes; running again")
                if folder.exists():
                    shutil.rmtree(folder)  # an unfinished or re-run split starts clean
                echo(f"[{_split_name(task, time)} {method}] running")
                run_benchmark(
                    source, time_key, task=task, holdout=time, out_dir=folder, methods=[method], seeds=seeds, preset=preset,
                    config=config, max_epochs=max_epochs, count_kind=kind, layer=source_layer,
                    otcfm_settings=None if otcfm_steps is None else {"n_steps": otcfm_steps},
                    mioflow_settings=None if mioflow_epochs is None else {"n_epochs": mioflow_epochs},
                    sctrace_overrides=sctrace_overrides, threads=threads, overwrite=True, plots=False, echo=lambda line: None,
                )
    summary = summarise_protocol(out_dir, timecourse, splits, methods)
    summary.update({"data": str(data) if not isinstance(data, ad.AnnData) else "AnnData (in memory)",
                    "time_key": time_key, "count_kind": detected, "profile": profile, "seeds": seeds,
                    "budgets": budgets, "preset": preset, "config": None if config is None else str(config)})
    (out_dir / "protocol.json").write_text(json.dumps(summary, indent=1, default=float))
    (out_dir / "protocol.md").write_text(protocol_markdown(summary))
    echo(protocol_markdown(summary))
    return summary


@contextlib.contextmanager
def _split_lock(split_dir: Path):
    """Hold the split's folder for this process while it runs there.

    Why: ``--rerun`` and an unfinished split start by clearing the folder, so a second protocol run on the same
    split (another shell, a scheduler retry) would wipe the first one's results mid-run. filelock (a torch
    dependency) releases the lock when the process dies, so a killed run never leaves the split blocked.
    """
    from filelock import FileLock, Timeout

    split_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(split_dir) + ".lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise SctraceInputError(
            f"another `sctrace protocol` is running split {split_dir.name} in {split_dir.parent.parent}; wait for it "
            "to finish, or give this run another --out or other --times."
        ) from None
    try:
        yield
    finally:
        lock.release()


def _kept_genes(folder: Path) -> list[str] | None:
    try:
        return json.loads((folder / "results.json").read_text()).get("genes")
    except (OSError, json.JSONDecodeError):
        return None


def _split_genes(timecourse, held_out: float, preset: str, config, max_epochs: int | None, count_kind: str,
                 overrides: dict | None) -> list[str]:
    """The genes a benchmark of this split chooses today (as :func:`run_benchmark` does)."""
    _, loaded = sctrace_options(preset, config, max_epochs, count_kind, overrides)
    train_rows = np.flatnonzero(~np.isclose(timecourse.times, held_out))
    return training_hvgs(timecourse, train_rows, loaded.data.n_top_genes, loaded.data.genes)


def _time_means(timecourse, genes: Sequence[str], times: Sequence[float]) -> dict[float, np.ndarray]:
    """Mean log-normalised expression over ``genes`` of the real cells at each time."""
    matrix, names = timecourse.expression(), timecourse.gene_names()
    means = {}
    for t in times:
        rows = np.flatnonzero(np.isclose(timecourse.times, t))
        means[float(t)] = np.asarray(lognorm_over_genes(matrix[rows], names, genes, timecourse.count_kind).mean(0)).ravel()
    return means


def _snap_distances(prediction: np.ndarray, means: dict[float, np.ndarray], held_out: float,
                    train_times: Sequence[float]) -> dict:
    """Distance of the prediction's mean to the truth's and to each training time's mean (Euclidean, over genes)."""
    predicted = np.asarray(prediction, dtype=np.float64).mean(0)
    to_truth = float(np.linalg.norm(predicted - means[held_out]))
    to_times = {f"{t:g}": float(np.linalg.norm(predicted - means[float(t)])) for t in train_times}
    return {"to_truth": to_truth, "to_times": to_times, "snaps": min(to_times.values()) < to_truth}


def summarise_protocol(out_dir: str | os.PathLike, timecourse, splits: Sequence[tuple[str, float]],
                       methods: Sequence[str]) -> dict:
    """Rows per split x method, the win table and the snap check, from the split folders in ``out_dir``."""
    out_dir = Path(out_dir)
    rows: list[dict] = []
    for task, time in splits:
        means_by_genes: dict[tuple[str, ...], dict[float, np.ndarray]] = {}
        for method in methods:
            path = out_dir / "splits" / _split_name(task, time) / method / "results.json"
            if not path.exists():
                continue
            results = json.loads(path.read_text())
            entry = results["methods"].get(method)
            if entry is None:
                continue
            row = {"split": _split_name(task, time), "task": task, "time": time, "method": method,
                   "n_seeds": len(entry["runs"]), "failed": entry.get("failed")}
            if not entry.get("failed"):
                row.update({k: entry["mean"].get(k) for k in (*SUMMARY_METRICS, "wall_s", "fit_s")})
                row["sd"] = {k: entry["sd"].get(k) for k in SUMMARY_METRICS}
                row.update(_training_speed(path.parent, method, entry["runs"]))
                # Each method's own genes: a split's methods share them unless some ran under another gene choice.
                genes = tuple(results["genes"])
                if genes not in means_by_genes:
                    means_by_genes[genes] = _time_means(timecourse, genes, [*results["train_times"], time])
                means = means_by_genes[genes]
                snaps = []
                for run in entry["runs"]:
                    prediction = path.parent / "work" / "predictions" / f"{_file_label(method)}_seed{run['seed']}.npz"
                    if prediction.exists():
                        snaps.append(_snap_distances(np.load(prediction)["expression"], means, time,
                                                     results["train_times"]))
                if snaps:
                    row["snap"] = {"to_truth": float(np.mean([s["to_truth"] for s in snaps])),
                                   "to_times": {t: float(np.mean([s["to_times"][t] for s in snaps]))
                                                for t in snaps[0]["to_times"]},
                                   "snapped_seeds": int(sum(s["snaps"] for s in snaps)), "n": len(snaps)}
                    row["snap"]["nearest_train_time"] = min(row["snap"]["to_times"], key=row["snap"]["to_times"].get)
            rows.append(row)
    return {"rows": rows, "wins": win_table(rows), "splits": [_split_name(t, s) for t, s in splits]}


def _training_speed(folder: Path, method: str, runs: Sequence[dict]) -> dict:
    """sctrace's optimiser steps per fit and steps per second of fitting, from each run's Lightning log.

    Why: a fit's wall time mixes data preparation, training and generation; steps per second says whether the
    training loop itself is slow, and the steps how much training a small data set got.
    """
    if method != "sctrace":
        return {}
    import pandas as pd

    steps, rates = [], []
    for run in runs:
        logs = sorted((folder / "runs" / f"sctrace_seed{run['seed']}").glob("logs/**/metrics.csv"))
        if not logs:
            continue
        last = pd.concat([pd.read_csv(log) for log in logs])["step"].max()
        if np.isfinite(last):
            steps.append(int(last) + 1)
            if run.get("fit_s"):
                rates.append((int(last) + 1) / run["fit_s"])
    return {"steps": float(np.mean(steps)) if steps else None, "steps_per_s": float(np.mean(rates)) if rates else None}


def win_table(rows: Sequence[dict], model: str = "sctrace") -> dict[str, dict]:
    """On how many splits ``model`` beats each other method: EMD (lower) and Pearson-delta (higher).

    Only splits where both have a score count; ``n`` says how many those were.
    """
    by_split: dict[str, dict[str, dict]] = {}
    for row in rows:
        if not row.get("failed"):
            by_split.setdefault(row["split"], {})[row["method"]] = row
    wins: dict[str, dict] = {}
    for split in by_split.values():
        if model not in split:
            continue
        ours = split[model]
        for method, theirs in split.items():
            if method == model:
                continue
            entry = wins.setdefault(method, {"emd": 0, "emd_n": 0, "pearson_delta": 0, "pearson_delta_n": 0})
            for key, better in (("emd", lambda a, b: a < b), ("pearson_delta", lambda a, b: a > b)):
                a, b = ours.get(key), theirs.get(key)
                if a is None or b is None or (isinstance(a, float) and math.isnan(a)) or math.isnan(b):
                    continue
                entry[f"{key}_n"] += 1
                entry[key] += int(better(a, b))
    return wins


def _fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def protocol_markdown(summary: dict) -> str:
    """The protocol's tables: scores per split x method, wins of sctrace, and the snap check."""
    lines = [f"# Leave-one-time-out protocol: {summary.get('data', '')}", "",
             f"Profile {summary.get('profile', '-')}, seeds {', '.join(map(str, summary.get('seeds', [])))}; data read "
             f"as {summary.get('count_kind', '-')}. Every interior time held out as interpolation, the last as "
             "extrapolation; each method scored by the same code on the same held-out cells (mean over seeds).", "",
             "Gene-gene r and C2ST AUC also with every value drawn on its own (iid): sctrace's default sampler borrows "
             "gene-gene structure from the nearest training cells; for a method without a sampler both are the same.", "",
             "| split | method | EMD | MMD | Pearson-delta | gene-gene r (iid) | C2ST AUC (iid) | wall s | "
             "mean nearer a training time? |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in summary["rows"]:
        if row.get("failed"):
            lines.append(f"| {row['split']} | {row['method']} | failed: {row['failed']} | | | | | | |")
            continue
        snap = row.get("snap")
        speed = "" if row.get("steps") is None else f" ({row['steps']:.0f} steps, {row['steps_per_s'] or 0:.1f}/s)"
        snap_text = "-" if snap is None else (
            f"{'yes' if snap['to_times'][snap['nearest_train_time']] < snap['to_truth'] else 'no'} "
            f"(truth {snap['to_truth']:.2f}; t={snap['nearest_train_time']} {snap['to_times'][snap['nearest_train_time']]:.2f})")
        lines.append(f"| {row['split']} | {row['method']} | {_fmt(row.get('emd'))} | {_fmt(row.get('mmd'))} | "
                     f"{_fmt(row.get('pearson_delta'))} | {_fmt(row.get('gene_corr'))} ({_fmt(row.get('gene_corr_iid'))}) | "
                     f"{_fmt(row.get('c2st_auc'))} ({_fmt(row.get('c2st_auc_iid'))}) | "
                     f"{_fmt(row.get('wall_s'), 1)}"
                     f"{speed} | "
                     f"{snap_text} |")
    lines += ["", "Splits on which sctrace beats each method (lower EMD; higher Pearson-delta):", "",
              "| method | EMD wins | Pearson-delta wins |", "|---|---|---|"]
    for method, entry in summary["wins"].items():
        lines.append(f"| {method} | {entry['emd']}/{entry['emd_n']} | {entry['pearson_delta']}/{entry['pearson_delta_n']} |")
    lines += ["", "Snap check: distance (Euclidean, log-normalised means over the split's genes) of the prediction's "
              "mean to the held-out truth's mean and to the nearest training time's mean; 'yes' means the prediction "
              "copied a training time rather than moving towards the truth."]
    return "\n".join(lines) + "\n"
