"""Where a fitted ZINB run's zeros come from, per observed time: `python benchmarks/zero_inflation.py RUN DATA TIME_KEY`.

RUN is a run directory fitted on raw counts (zinb); DATA the time course it was fitted on. For up to 150 real cells
of every time after the source, the count decoder reads their own sentences at their own time (source and context
from training rows, as at generation) and gives each gene's zero probability: the zero-inflation part ``pi`` and
the negative binomial's own zero ``NB(0)``. Printed per time beside the real cells' zero fraction, with the median
inverse dispersion and the spread of the NB mean across cells. A decoder whose ``pi`` is the same at every time
while the real zero fraction moves decodes one population for all times (BENCHMARKS.md, session of 2026-12-07).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("data")
    parser.add_argument("time_key")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    import anndata as ad
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _heldout_fit import count_state_of_sentences, heldout_arrays

    from sctrace import TRACE

    model = TRACE.load(args.run)
    if model.config.counts.likelihood != "zinb":
        raise SystemExit(f"{args.run} was fitted with {model.config.counts.likelihood}; this script reads a zinb run.")
    adata = ad.read_h5ad(args.data)
    times = adata.obs[args.time_key].astype(float).to_numpy()
    _, tokens, lengths = heldout_arrays(adata, model, "counts")
    columns = adata.var_names.get_indexer(list(model.spec.genes))
    counts = adata.X[:, columns]
    counts = counts.toarray() if hasattr(counts, "toarray") else np.asarray(counts)
    rng = np.random.default_rng(0)
    with torch.no_grad():
        for t in model.spec.time_values[1:]:
            rows = np.flatnonzero(np.isclose(times, t))[:150]
            state, read = count_state_of_sentences(model, tokens[rows], lengths[rows], float(t), rng)
            library = torch.as_tensor(counts[rows].sum(1), dtype=torch.float32)
            params = model.net.count_params(state, library, tokens=read)
            pi, mu, theta = torch.sigmoid(params["pi_logits"]), params["mu"], params["theta"]
            nb_zero = (theta / (theta + mu)) ** theta
            zero = pi + (1 - pi) * nb_zero
            print(f"t = {t:g}: real zero fraction {np.mean(counts[rows] == 0):.3f}; decoder P(0) {zero.mean():.3f} "
                  f"(pi {pi.mean():.3f}, NB(0) {nb_zero.mean():.3f}); median theta {theta[0].median():.3f}; NB mean "
                  f"{mu.mean():.1f}, its sd across cells {mu.std(0).mean():.1f}")


if __name__ == "__main__":
    main()
