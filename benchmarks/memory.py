"""Peak memory of `TRACE(path).fit` on 10x more cells: it must not grow with the number of cells.

For each size the script writes a simulated time course to an ``.h5ad`` file a block of cells at a time (the
writer never holds the whole matrix), then, in a fresh child process per size, reads it with ``TRACE(path, ...)``
(a path is read backed, a block of cells at a time, and the corpus goes to disk) and trains ``--steps`` steps
with the ``cpu-small`` preset and one torch thread. The child reports its peak resident set size (``VmHWM``,
see :func:`sctrace.harness.benchmark.peak_rss_mb`) after imports, after preparing the corpus and after training, the
wall time of each phase, and the padding share of one epoch of training batches
(:func:`sctrace.data.datamodule.padding_fraction`). The parent prints a table and the ratio of the peaks.

Command: ``.venv/bin/python benchmarks/memory.py`` (65,500 and 655,000 cells, 50 steps); the simulated files
are kept in ``--workdir`` and reused when present. Results: benchmarks/README.md, section "Memory".
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HOLDOUT = 2.5  # the middle time point of the simulation's default times


def write_simulated_h5ad(path: Path, n_cells: int, n_genes: int, seed: int, block_cells: int = 16_384) -> None:
    """Write ``simulate_timecourse(n_cells, n_genes, seed=seed)``'s obs, var and X to ``path``, X block by block.

    The counts are drawn exactly as :func:`sctrace.data.simulate.simulate_timecourse` draws them (same
    per-block random streams, so the same matrix), but each block of cells is appended to the file as soon as
    it is drawn instead of being kept; varm and uns are left out. This reaches into the simulator's private
    helpers because it has no public block-by-block API.
    """
    import anndata as ad
    import h5py
    import pandas as pd
    import scipy.sparse as sp
    from anndata.io import sparse_dataset, write_elem

    from sctrace.data import simulate as sim

    times, n_donors = (0.0, 1.0, 2.5, 4.0, 6.0, 8.5), 2
    time_values = sim._validate(n_cells, n_genes, times, n_donors, seed, block_cells)
    genes = sim._draw_genes(sim._stream(seed, sim._GENE_STREAM), n_genes, n_donors)
    cell_rng = sim._stream(seed, sim._CELL_STREAM)
    lineage_a_fraction = sim._draw_lineage_a_fraction(cell_rng, n_donors)
    cells = sim._draw_cells(cell_rng, n_cells, time_values, n_donors, lineage_a_fraction)
    obs = pd.DataFrame(
        {
            "time": time_values[cells.time_index],
            "cell_type": pd.Categorical.from_codes(sim._cell_type_codes(cells), categories=list(sim.CELL_TYPES)),
            "donor": pd.Categorical.from_codes(cells.donor_index, categories=[f"donor{d + 1}" for d in range(n_donors)]),
            "pseudotime": cells.pseudotime,
            "lineage": pd.Categorical.from_codes(cells.fate, categories=list(sim.LINEAGES)),
        },
        index=pd.Index(sim._numbered_names("Cell", np.arange(1, n_cells + 1), n_cells), dtype=object),
    )
    var = pd.DataFrame(
        {"program": pd.Categorical.from_codes(genes.program, categories=list(sim.PROGRAMS))},
        index=pd.Index(sim._gene_names(genes.program), dtype=object),
    )
    partial = path.with_suffix(".partial")
    ad.AnnData(obs=obs, var=var).write_h5ad(partial)

    def blocks():
        """CSR blocks of about ``block_cells`` cells, drawn as simulate._sample_counts draws them."""
        data, indices, row_nnz = [], [], []
        for start, stop in sim._steps(n_cells, sim._BLOCK_SIZE):
            if start % sim._BLOCK_SIZE == 0:
                block = np.random.SeedSequence(seed, spawn_key=(sim._COUNT_STREAM, start // sim._BLOCK_SIZE))
                gamma_rng, poisson_rng, dropout_rng = (np.random.default_rng(s) for s in block.spawn(3))
            log_mean = sim._log_mean(genes, cells, slice(start, stop))
            counts = poisson_rng.poisson(gamma_rng.gamma(genes.theta, np.exp(log_mean) / genes.theta))
            rows, columns = np.nonzero(counts)
            dropout = sim._sigmoid(-sim._DROPOUT_SHAPE * (log_mean[rows, columns] - sim._DROPOUT_MIDPOINT))
            kept = dropout_rng.random(rows.size) >= dropout
            data.append(counts[rows[kept], columns[kept]].astype(np.int32))
            indices.append(columns[kept].astype(np.int32))
            row_nnz.append(np.bincount(rows[kept], minlength=stop - start))
            if sum(map(len, row_nnz)) >= block_cells or stop == n_cells:
                indptr = np.concatenate(([0], np.cumsum(np.concatenate(row_nnz))))
                yield sp.csr_matrix((np.concatenate(data), np.concatenate(indices), indptr), shape=(indptr.size - 1, n_genes))
                data, indices, row_nnz = [], [], []

    with h5py.File(partial, "a") as handle:
        for i, block in enumerate(blocks()):
            if i == 0:
                write_elem(handle, "X", block)
            else:
                sparse_dataset(handle["X"]).append(block)
    os.replace(partial, path)


def child(path: str, run_dir: str, steps: int, seed: int, in_memory: bool) -> dict:
    """Prepare and train in this process; return its peak memory (MB) and wall times (s) per phase.

    ``in_memory`` reads the whole file first and passes the AnnData, for comparison: nothing is streamed then.
    """
    import anndata as ad
    import torch

    torch.set_num_threads(1)
    from sctrace.data.datamodule import TraceDataModule, padding_fraction
    from sctrace.estimator import TRACE
    from sctrace.harness.benchmark import peak_rss_mb

    imported_mb = peak_rss_mb()
    started = time.perf_counter()
    data = ad.read_h5ad(path) if in_memory else path
    model = TRACE(data, "time", task="interpolate", holdout=HOLDOUT, preset="cpu-small", seed=seed)
    prepared_mb, prepared = peak_rss_mb(), time.perf_counter()
    model.fit(run_dir=run_dir, overwrite=True, progress=False, accelerator="cpu", max_steps=steps)
    trained_mb, trained = peak_rss_mb(), time.perf_counter()

    corpus, config = model.corpus, model.config
    datamodule = TraceDataModule(corpus, config.training.batch_size, config.training.val_fraction, seed)
    batches = [datamodule.train_rows[indices] for indices in datamodule.train_dataloader().batch_sampler]
    return {
        "n_cells": int(model.timecourse.adata.n_obs),
        "n_train_cells": len(corpus.cell_times),
        "n_pairs": len(corpus.pairs),
        "n_genes": corpus.spec.n_genes,
        "in_memory": in_memory,
        "corpus_mb": 0.0 if in_memory else sum(f.stat().st_size for f in corpus.tokens.path.parent.iterdir()) / 2**20,
        "steps": steps,
        "imported_mb": imported_mb,
        "prepared_mb": prepared_mb,
        "peak_mb": trained_mb,
        "prepare_s": prepared - started,
        "train_s": trained - prepared,
        "padding_fraction": padding_fraction(corpus, batches),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, nargs="+", default=[65_500, 655_000])
    parser.add_argument("--genes", type=int, default=1_200)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/sctrace_memory_benchmark"))
    parser.add_argument("--in-memory", action="store_true", help="pass an in-memory AnnData instead of the path")
    parser.add_argument("--child", nargs=3, metavar=("H5AD", "RUN_DIR", "STEPS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        path, run_dir, steps = args.child
        print(json.dumps(child(path, run_dir, int(steps), args.seed, args.in_memory)))
        return

    args.workdir.mkdir(parents=True, exist_ok=True)
    results = []
    for n_cells in args.cells:
        path = args.workdir / f"simulated_{n_cells}x{args.genes}_seed{args.seed}.h5ad"
        written = 0.0
        if not path.exists():
            started = time.perf_counter()
            write_simulated_h5ad(path, n_cells, args.genes, args.seed)
            written = time.perf_counter() - started
        run_dir = args.workdir / f"run_{n_cells}"
        command = [sys.executable, __file__, "--seed", str(args.seed), "--child", str(path), str(run_dir), str(args.steps)]
        command += ["--in-memory"] if args.in_memory else []
        started = time.perf_counter()
        finished = subprocess.run(command, check=True, capture_output=True, text=True)
        result = json.loads(finished.stdout.strip().splitlines()[-1])
        result.update(file_mb=path.stat().st_size / 2**20, write_s=written, child_s=time.perf_counter() - started)
        results.append(result)
        print(json.dumps(result), flush=True)

    print(f"\n| cells | train cells | pairs | h5ad MB | corpus MB | after imports MB | after prepare MB | peak MB "
          f"| prepare s | train s ({args.steps} steps) | padding |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['n_cells']:,} | {r['n_train_cells']:,} | {r['n_pairs']:,} | {r['file_mb']:.0f} | {r['corpus_mb']:.0f} "
              f"| {r['imported_mb']:.0f} | {r['prepared_mb']:.0f} | {r['peak_mb']:.0f} | {r['prepare_s']:.0f} "
              f"| {r['train_s']:.0f} | {r['padding_fraction']:.3f} |")
    if len(results) > 1:
        print(f"\npeak RSS ratio, largest / smallest: {results[-1]['peak_mb'] / results[0]['peak_mb']:.3f}")


if __name__ == "__main__":
    main()
