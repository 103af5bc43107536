"""Do generated cells co-vary gene to gene like real ones? Re-scores finished benchmark directories.

Per-gene EMD, the mean-expression scores and E-distance (twice the squared distance of the means) cannot tell
real cells from cells drawn gene by gene from the right marginals. ``gene-gene r`` (:func:`sctrace.harness.metrics.
gene_correlation`) can: the Pearson r between the gene-gene correlation matrices of generated and real cells over
the real cells' 100 most variable genes. For each ``sctrace benchmark`` directory this prints:

- real half vs half (20 random splits of the held-out cells): what a perfect generator would score against half
  the cells;
- per method, the saved predictions' gene-gene r per seed and their mean;
- the same predictions with each gene's values shuffled across the cells (every marginal, so EMD and the means,
  unchanged; the co-variation gone): what independent per-gene draws score.

The held-out cells are read only to score, as in the benchmark. Command (after the benchmarks of BENCHMARKS.md;
seconds per directory)::

    .venv/bin/python benchmarks/gene_structure.py bench/klein_interp bench/lps_interp bench/sim_interp
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from _heldout_fit import data_missing


def shuffled_per_gene(cells: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each column permuted on its own: the marginals stay, the joint structure goes."""
    return np.column_stack([rng.permutation(cells[:, g]) for g in range(cells.shape[1])])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", type=Path, nargs="+", help="output directories of `sctrace benchmark`")
    args = parser.parse_args(argv)

    from sctrace.harness.benchmark import benchmark_split
    from sctrace.harness.metrics import gene_correlation

    for run in args.runs:
        if data_missing(Path(json.loads((run / "results.json").read_text())["data"])):
            continue
        results, _, cells = benchmark_split(run)
        real = cells.real.toarray() if hasattr(cells.real, "toarray") else np.asarray(cells.real)
        rng = np.random.default_rng(0)
        halves = []
        for _ in range(20):
            order = rng.permutation(len(real))
            halves.append(gene_correlation(real[order[: len(real) // 2]], real[order[len(real) // 2 :]]))
        print(f"\n{run} ({results['task']} at {results['holdout']:g}, {len(real)} real cells, {len(results['genes'])} genes)")
        print("| prediction | gene-gene r per seed | mean | each gene shuffled across cells, mean |")
        print("|---|---|---|---|")
        print(f"| real half vs half (20 splits) | - | {np.mean(halves):.3f} ± {np.std(halves, ddof=1):.3f} | - |")
        by_method: dict[str, list[Path]] = {}
        for path in sorted((run / "work" / "predictions").glob("*_seed*.npz")):
            by_method.setdefault(path.stem.rsplit("_seed", 1)[0], []).append(path)
        for method, paths in by_method.items():
            values, shuffled = [], []
            for path in paths:
                pred = np.load(path)["expression"]
                values.append(gene_correlation(pred, real))
                shuffled.append(gene_correlation(shuffled_per_gene(pred, rng), real))
            print(f"| {method} | {' / '.join(f'{v:.3f}' for v in values)} | {np.mean(values):.3f} | {np.mean(shuffled):.3f} |",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
