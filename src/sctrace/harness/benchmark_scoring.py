"""Scoring the benchmark's predictions on the held-out cells, summarised over seeds into the results table."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from sctrace.harness.evaluate import METRIC_LABELS, rouge_scores, run_spec

# Metrics in the results table, in order; ROUGE only exists for sctrace (the others produce no sentences).
TABLE_METRICS = ("mmd", "emd", "e_distance", "pearson", "r2", "pearson_delta", "gene_corr", "c2st_auc", "rouge1_f1")


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


def _independent_scores(arrays, real, metrics: dict, seed: int) -> dict:
    """``gene_corr_iid`` and ``c2st_auc_iid``: the scores of the same prediction with every value drawn on its own.

    Why: sctrace's default sampler re-orders its draws so genes co-vary as in the nearest training cells; these say
    what the model itself generates. A method without a sampler (a floor or a peer) makes its cells one way, so its
    two pairs of scores are the same.
    """
    if "expression_iid" not in arrays:
        return {f"{key}_iid": metrics.get(key) for key in ("gene_corr", "c2st_auc")}
    from sctrace.harness.metrics import classifier_auc, gene_correlation

    pred = arrays["expression_iid"]
    return {"gene_corr_iid": gene_correlation(pred, real), "c2st_auc_iid": classifier_auc(pred, real, seed=seed)}


def _score_records(records: list[dict], failures: dict[str, str], cells, matrix, gene_names, seeds) -> dict:
    """Score every prediction on the held-out cells and summarise each method over seeds."""
    from sctrace.data.corpus import tokenize_with_spec
    from sctrace.harness.metrics import score

    real_tokens_by_run: dict[str, np.ndarray] = {}
    methods: dict[str, dict] = {}
    for record in records:
        arrays = np.load(record["prediction"])
        metrics = score(arrays["expression"], cells.real, reference=cells.reference, seed=record["seed"])
        metrics.update(_independent_scores(arrays, cells.real, metrics, record["seed"]))
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
