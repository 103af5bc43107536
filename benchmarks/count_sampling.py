"""Cost of stratified and copula count sampling against independent draws (run on demand).

    .venv/bin/python benchmarks/count_sampling.py                       # 1,000 and 10,000 cells x 2,000 genes
    .venv/bin/python benchmarks/count_sampling.py --cells 1000 --genes 1000 --threads 1 2

``CountDecoder.sample`` draws a (cells x genes) block of values from a count decoder with random weights (speed
does not depend on them) for ``zinb`` (raw counts) and ``hurdle`` with the quantile marginal (log-normalised
data, cpu-small's): independently (``iid``: torch's Gamma-Poisson or Gaussian draws) and stratified (the levels
of ``StratifiedLevels`` read back through ``CountDecoder.quantile``: scipy's ``nbinom.ppf``, an iterative search
per value, or torch's ``ndtri`` and the quantile tables), and with the gene copula (cpu-small's since 2026-11-29
08:50: the same levels re-ordered by normal draws with two time points' correlation, 500 cells each, the most a
fitted copula holds, mixed as for a time between them). The decoder's forward pass is outside the timing, as
it is the same for all. Each timing is the fastest of ``--repeats`` (the machine is shared). Printed: seconds,
values per second and the ratios stratified / iid and copula / iid, per thread count. ``TRACE.predict`` spends most of its time
in MaskGIT generation (``benchmarks/generation.py``), so the ratio here overstates what stratified sampling
adds to a predict call; the figure to compare is the absolute time per value against generation's per cell.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from _timing import fastest

from sctrace.model.counts import CountDecoder
from sctrace.model.sampling import COPULA_CELLS, GeneCopula, StratifiedLevels, normal_scores, reorder_levels


def _decoder(likelihood: str, n_genes: int, n_input: int = 64) -> CountDecoder:
    decoder = CountDecoder(n_input, n_genes, n_hidden=128, dropout=0.0, likelihood=likelihood,
                           hurdle_marginal="quantile" if likelihood == "hurdle" else "gaussian")
    if likelihood == "hurdle":
        rng = np.random.default_rng(0)
        # Skewed positive values with many zeros, the shape of log-normalised expression.
        values = np.log1p(rng.gamma(0.6, 3.0, size=(2000, n_genes)) * (rng.random((2000, n_genes)) < 0.4))
        decoder.fit_marginals(values, seed=0)
    return decoder.eval()


def run(cells: int, genes: int, likelihood: str, repeats: int) -> tuple[float, float, float]:
    """(iid, stratified, copula) seconds for one block of draws."""
    torch.manual_seed(0)
    decoder = _decoder(likelihood, genes)
    state = torch.randn(cells, 64)
    library = torch.full((cells,), 5000.0) if likelihood == "zinb" else None
    with torch.no_grad():
        params = decoder(state, library)
    generator = torch.Generator().manual_seed(0)
    iid = fastest(lambda: decoder.sample(params, generator=generator), repeats)

    rng = np.random.default_rng(1)
    copula = GeneCopula(np.array([0.0, 1.0]), [normal_scores(rng.gamma(0.6, 3.0, (COPULA_CELLS, genes))) / np.sqrt(COPULA_CELLS)
                                               for _ in range(2)])

    def draw(transform) -> None:
        levels = StratifiedLevels(cells, genes, np.random.default_rng(0), transform=transform)
        for start in range(0, cells, 128):  # TRACE.predict's batches
            stop = min(start + 128, cells)
            rows = {key: value[start:stop] for key, value in params.items()}
            decoder.sample(rows, uniforms=torch.as_tensor(levels.rows(start, stop)))

    def by_copula(levels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return reorder_levels(levels, copula.normals(0.5, len(levels), rng))

    return iid, fastest(lambda: draw(None), repeats), fastest(lambda: draw(by_copula), repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--genes", type=int, default=2000)
    parser.add_argument("--likelihood", nargs="+", default=["zinb", "hurdle"], choices=["zinb", "hurdle"])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print("| likelihood | cells x genes | threads | iid s | stratified s | copula s | copula values/s | stratified / iid | copula / iid |")
    print("|---|---|---|---|---|---|---|---|---|")
    for likelihood in args.likelihood:
        for cells in args.cells:
            for threads in args.threads:
                torch.set_num_threads(threads)
                iid, stratified, copula = run(cells, args.genes, likelihood, args.repeats)
                print(f"| {likelihood} | {cells:,} x {args.genes:,} | {threads} | {iid:.3f} | {stratified:.3f} | "
                      f"{copula:.3f} | {cells * args.genes / copula:,.0f} | {stratified / iid:.1f} | {copula / iid:.1f} |",
                      flush=True)


if __name__ == "__main__":
    main()
