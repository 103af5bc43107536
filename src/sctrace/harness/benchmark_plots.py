"""A finished benchmark's plots, drawn at the end of a run or again later from its saved predictions (`sctrace plot`)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import anndata as ad
import numpy as np

from sctrace._errors import SctraceInputError
from sctrace.data.io import read_timecourse
from sctrace.harness.benchmark_jobs import _file_label
from sctrace.harness.evaluate import lognorm_over_genes, scoring_cells


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
    from sctrace.harness.embedding_plots import EmbeddingView
    from sctrace.harness.plot_common import cell_type_labels
    from sctrace.harness.plots import nearest_labels, prediction_plots

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
