"""Time and memory of the rank-value tokenizer on a T-cell-sized simulated matrix (run on demand).

    .venv/bin/python benchmarks/bench_tokenize.py                      # 655,000 cells x 2,000 genes
    .venv/bin/python benchmarks/bench_tokenize.py --n-cells 50000 --threads 2

The matrix is simulated chunk by chunk (not timed): each gene has a detection rate drawn from a
Beta distribution with mean ``--density`` and each cell a log-normal depth, so genes range from rare
to nearly ubiquitous and cells from shallow to deep, as in 2,000 HVGs of 10x data; non-zero counts are
1 + Poisson(Gamma) (negative-binomial) with gene- and cell-dependent means. It is stored as float32
CSR with int32 indices, like an AnnData ``X``. Peak memory is the process's maximum RSS
(``resource.getrusage``), printed after each stage next to the size of the matrix itself. CPU time
is printed beside wall time because the benchmark machine may be shared.
"""

from __future__ import annotations

import argparse
import os
import resource
import time


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-cells", type=int, default=655_000)
    parser.add_argument("--n-genes", type=int, default=2_000)
    parser.add_argument("--density", type=float, default=0.2, help="mean fraction of non-zero entries")
    parser.add_argument("--max-len", type=int, default=300, help="tokens per cell (T-cell preset: 300)")
    parser.add_argument("--threads", type=int, default=1, help="BLAS/OpenMP threads for numpy")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


ARGS = parse_args()
# Without threadpoolctl the thread count must be fixed before numpy is imported.
for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[variable] = str(ARGS.threads)

import numpy as np  # noqa: E402
import scipy.sparse as sp  # noqa: E402

from sctrace.data.tokenize import nonzero_gene_medians, rank_value_tokenize  # noqa: E402

GIB = 1024**3
SIMULATION_CHUNK = 2_048  # small, so simulating does not set the peak RSS the tokenizer is judged by


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB  # ru_maxrss is KiB on Linux


def current_rss_gib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / GIB


def simulate_counts(n_cells: int, n_genes: int, density: float, seed: int) -> sp.csr_array:
    """Negative-binomial-like sparse counts, built chunk by chunk into preallocated arrays.

    The arrays are allocated for 1.25x the expected number of non-zeros and then viewed at their
    filled length: pages never written are never backed by memory, so this costs no RSS and avoids a
    final concatenation that would briefly hold the matrix twice.
    """
    rng = np.random.default_rng(seed)
    concentration = 1.5
    detection = rng.beta(concentration * density / (1 - density), concentration, size=n_genes)
    gene_mean = 0.5 + 8.0 * detection**2 * rng.lognormal(0.0, 0.5, size=n_genes)
    depth = rng.lognormal(0.0, 0.35, size=n_cells)
    depth /= depth.mean()

    capacity = int(1.25 * density * n_cells * n_genes) + SIMULATION_CHUNK * n_genes
    data = np.empty(capacity, dtype=np.float32)
    indices = np.empty(capacity, dtype=np.int32)
    indptr = np.zeros(n_cells + 1, dtype=np.int64)
    nnz = 0
    for start in range(0, n_cells, SIMULATION_CHUNK):
        stop = min(start + SIMULATION_CHUNK, n_cells)
        probability = np.minimum(depth[start:stop, None] * detection[None, :], 1.0).astype(np.float32)
        cells, genes = np.nonzero(rng.random(probability.shape, dtype=np.float32) < probability)
        if nnz + cells.size > capacity:
            raise RuntimeError("simulated more non-zeros than allocated; lower --density")
        mean = gene_mean[genes] * depth[start + cells]
        data[nnz : nnz + cells.size] = 1 + rng.poisson(rng.gamma(2.0, mean / 2.0))
        indices[nnz : nnz + cells.size] = genes
        indptr[start + 1 : stop + 1] = nnz + np.cumsum(np.bincount(cells, minlength=stop - start))
        nnz += cells.size
    # int32 row pointers when they fit, as AnnData writes them; mixed widths make scipy copy indices.
    indptr = indptr.astype(np.int32) if nnz < np.iinfo(np.int32).max else indptr
    return sp.csr_array((data[:nnz], indices[:nnz], indptr), shape=(n_cells, n_genes))


def main() -> None:
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(ARGS.threads)
        thread_control = "threadpoolctl"
    except ImportError:
        thread_control = "environment variables"
    print(f"threads: {ARGS.threads} (set with {thread_control}); CPUs visible: {os.cpu_count()}")

    started = time.perf_counter()
    counts = simulate_counts(ARGS.n_cells, ARGS.n_genes, ARGS.density, ARGS.seed)
    matrix_gib = (counts.nnz * (counts.data.itemsize + counts.indices.itemsize) + counts.indptr.nbytes) / GIB
    print(
        f"simulated {counts.shape[0]:,} x {counts.shape[1]:,} CSR, {counts.nnz:,} non-zeros "
        f"(density {counts.nnz / (counts.shape[0] * counts.shape[1]):.3f}, "
        f"{counts.nnz / counts.shape[0]:.0f} genes per cell) in {time.perf_counter() - started:.1f} s (not counted)"
    )
    print(
        f"input matrix: {matrix_gib:.2f} GiB; RSS now {current_rss_gib():.2f} GiB, "
        f"peak so far {peak_rss_gib():.2f} GiB"
    )

    started, started_cpu = time.perf_counter(), time.process_time()
    gene_medians = nonzero_gene_medians(counts)
    medians_s, medians_cpu_s = time.perf_counter() - started, time.process_time() - started_cpu
    print(f"medians:  {medians_s:6.1f} s wall, {medians_cpu_s:6.1f} s CPU; peak RSS {peak_rss_gib():.2f} GiB")

    started, started_cpu = time.perf_counter(), time.process_time()
    tokens, lengths = rank_value_tokenize(counts, gene_medians, max_len=ARGS.max_len)
    tokenize_s, tokenize_cpu_s = time.perf_counter() - started, time.process_time() - started_cpu
    output_gib = (tokens.nbytes + lengths.nbytes) / GIB
    print(
        f"tokenize: {tokenize_s:6.1f} s wall, {tokenize_cpu_s:6.1f} s CPU "
        f"({counts.shape[0] / tokenize_s:,.0f} cells/s); output {output_gib:.2f} GiB; peak RSS {peak_rss_gib():.2f} GiB"
    )
    print(f"mean length {lengths.mean():.1f}, cells at max_len {np.mean(lengths == ARGS.max_len):.1%}")


if __name__ == "__main__":
    main()
