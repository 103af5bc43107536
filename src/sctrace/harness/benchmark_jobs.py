"""Running the benchmark's jobs: each method and seed fitted and predicted in its own spawned process, with its memory."""

from __future__ import annotations

import multiprocessing
import resource
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import anndata as ad
import numpy as np
import scipy.sparse as sp

from sctrace._threads import set_threads as _set_threads
from sctrace.harness.evaluate import lognorm_over_genes
from sctrace.harness.methods import METHOD_REGISTRY, fit_method


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
        # Past the last training time the step is calibrated on the training cells (sctrace.calibrate).
        model.fit(run_dir=options["run_dir"], overwrite=True, progress=False,
                  calibrate_extrapolation=bool(target > times.max()))
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
            predict_seconds = time.perf_counter() - predict_started  # the prediction scored, not the iid draw below
            if predict.get("sampling", model.config.generation.count_sampling) != "iid":
                # The same cells' values drawn each on its own: gene-gene structure the model generates, not what
                # the copula or stratified sampler borrows from the training cells (scored as gene_corr_iid).
                independent = model.predict(target, n_cells=n_cells, seed=seed, **{**predict, "sampling": "iid"})
                arrays["expression_iid"] = lognorm_over_genes(
                    independent.X, independent.var_names, job["genes"], job["count_kind"]).toarray()
            outputs.append((variant["label"], predict_seconds, arrays))
    else:
        expression = lognorm_over_genes(train.X, train.var_names, job["genes"], job["count_kind"])
        predict_cells = fit_method(method, expression, times, seed, job.get(method) or {})
        cells = predict_cells(target, n_cells)
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
