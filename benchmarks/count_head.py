"""Does the count decoder tell cells apart, or has it collapsed to one profile per time point?

The authors' code's count head collapsed to one profile; this measures ours. It fits sctrace (the held-out
time removed first), then decodes the *real* held-out cells' sentences (tokenized with the model's gene
medians, source and context from training rows, as at generation) and compares the count head's expected
expression, log-normalised, with those cells' real values:

- spread: the across-cell standard deviation of each gene's expected value (mean over genes), next to the
  real cells' (a collapsed head has almost none);
- per-gene r and per-cell r (`sctrace.harness.metrics.per_cell_fidelity`): the median over genes of the across-cell
  Pearson r between expected and real values, and over cells of the across-gene r of each cell's deviation;
- state cosine: the mean cosine similarity between two cells' count-decoder inputs;
- a ridge regression from the sentence's gene set (multi-hot) to the real values, fitted on the training
  cells: how much the sentences say about the counts at all.

The held-out cells are read here to diagnose the model, never to fit or choose it.

Command (about 2 min per data set on one core)::

    .venv/bin/python benchmarks/count_head.py ../shared/data/shalek2014_mdc_lps.h5ad --time-key time_hours \
        --holdout 2 --count-kind lognorm
    .venv/bin/python benchmarks/count_head.py ../shared/data/klein2015_mesc.h5ad --time-key time_days --holdout 4
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
from _heldout_fit import (
    add_heldout_arguments,
    count_state_of_sentences,
    data_missing,
    fit_heldout,
    heldout_arrays,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_heldout_arguments(parser)
    args = parser.parse_args(argv)
    if data_missing(args.data):
        return 0

    import torch
    import torch.nn.functional as F
    from sklearn.linear_model import Ridge

    from sctrace.harness.evaluate import lognorm_over_genes
    from sctrace.harness.metrics import per_cell_fidelity
    from sctrace.model.module import N_SPECIAL

    adata, times, model = fit_heldout(args)
    spec, net = model.spec, model.net.eval()
    genes = list(spec.genes)
    values, tokens, lengths = heldout_arrays(adata, model, args.count_kind)
    held_out = np.flatnonzero(np.isclose(times, args.holdout))
    real = values[held_out]

    with torch.no_grad():
        state, sentences = count_state_of_sentences(model, tokens[held_out], lengths[held_out], args.holdout,
                                         np.random.default_rng(args.seed))
        depth = np.asarray(adata.X[held_out][:, adata.var_names.get_indexer(genes)].sum(1)).ravel()
        params = net.count_params(state, torch.as_tensor(depth, dtype=torch.float32), tokens=sentences)
        expected = net.count_decoder.mean(params).numpy()
    if args.count_kind == "counts":
        expected = lognorm_over_genes(expected, np.asarray(genes), genes).toarray()
    unit = F.normalize(state, dim=-1)
    cosine = float((unit @ unit.T).mean())

    def multihot(rows_):
        hot = np.zeros((rows_.size, spec.n_genes), dtype=np.float32)
        for i, row in enumerate(tokens[rows_]):
            hot[i, row[row >= N_SPECIAL] - N_SPECIAL] = 1.0
        return hot

    training = np.flatnonzero(~np.isclose(times, args.holdout))
    ridge = Ridge(alpha=10.0).fit(multihot(training), values[training]).predict(multihot(held_out))

    decoded, ridged = per_cell_fidelity(expected, real), per_cell_fidelity(ridge, real)
    print(f"{args.data.name}, {args.holdout:g} held out, seed {args.seed}, {model.config.counts.likelihood}, "
          f"{model.config.counts.count_pooling}")
    print("| | spread (sd across cells) | per-gene r | per-cell r |")
    print("|---|---|---|---|")
    print(f"| real held-out cells | {real.std(0).mean():.3f} | 1 | 1 |")
    print(f"| count head, expected values | {expected.std(0).mean():.3f} | {decoded['per_gene_r']:.3f} | "
          f"{decoded['per_cell_r']:.3f} |")
    print(f"| ridge on the sentence's genes | {ridge.std(0).mean():.3f} | {ridged['per_gene_r']:.3f} | "
          f"{ridged['per_cell_r']:.3f} |")
    print(f"count-decoder input: mean cosine between cells {cosine:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
