"""How close does sctrace come to real cells at the times it was trained on? The ceiling for any held-out time.

At a held-out time two things can go wrong: the model may not know what the cells look like there, and its
generator (sentences, then the count decoder) may not render cells faithfully even where it does. This script
separates the two. It fits sctrace with the held-out time removed (as ``sctrace benchmark`` does), then at every
observed time splits the real cells at random into halves A and B and scores against B (per-gene EMD on
log-normalised values):

- real split: A itself, the floor set by sampling alone;
- per-gene resampling: each gene's values drawn independently from A's, i.e. perfect marginals but no gene-gene
  structure (per-gene EMD cannot tell this from A; the difference to A is sampling noise);
- per-gene hurdle (log-normalised data only): each gene's hurdle (MAST's: off, or Normal when on) fitted to A
  by maximum likelihood and drawn: the best a hurdle decoder that collapsed to one profile per time can do;
- generated: ``TRACE.predict`` at that time, as many cells as A holds (generation never sees A or B);
- count head on real sentences: the decoder reads A's real sentences (source and context from training rows,
  as at generation) and the count decoder's draw is scored: the generator with perfect sentences.

At the observed (training) times both halves are training cells: the model has seen B there, so "generated"
can come below A's own scores. Those rows measure how faithfully the generator renders a population it was fitted
to, not how it generalises; the held-out row does the latter. The source time is not a training target (unless
``source_target``), so its row measures something else. A and B at the held-out time are read only to score;
nothing is fitted or chosen on them.

Command (about 2 min per data set on one core)::

    .venv/bin/python benchmarks/fidelity.py ../shared/data/shalek2014_mdc_lps.h5ad --time-key time_hours \
        --holdout 2 --count-kind lognorm
    .venv/bin/python benchmarks/fidelity.py ../shared/data/klein2015_mesc.h5ad --time-key time_days --holdout 4
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


def hurdle_draw(fit_to: np.ndarray, n_cells: int, rng: np.random.Generator) -> np.ndarray:
    """Per-gene hurdle MLE on ``fit_to`` (on-rate, mean and variance of the positive values), then drawn.

    Negative Gaussian draws are clipped at zero, as :meth:`sctrace.model.counts.CountDecoder.sample` does.
    """
    on = fit_to > 0
    n_on = np.maximum(on.sum(0), 1)
    rate = on.mean(0)
    mean = (fit_to * on).sum(0) / n_on
    sd = np.sqrt((((fit_to - mean) ** 2) * on).sum(0) / n_on)
    values = np.clip(mean + sd * rng.standard_normal((n_cells, fit_to.shape[1])), 0.0, None)
    return np.where(rng.random(values.shape) < rate, values, 0.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_heldout_arguments(parser)
    parser.add_argument("--max-cells", type=int, default=400, help="cap on the size of half A")
    args = parser.parse_args(argv)
    if data_missing(args.data):
        return 0

    import torch

    from sctrace.harness.evaluate import lognorm_over_genes
    from sctrace.harness.metrics import emd

    adata, times, model = fit_heldout(args)
    spec, net = model.spec, model.net.eval()
    genes = list(spec.genes)
    values, tokens, lengths = heldout_arrays(adata, model, args.count_kind)
    rng = np.random.default_rng(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    lognorm = args.count_kind == "lognorm"

    print(f"{args.data.name}, {args.holdout:g} held out, seed {args.seed}, {model.config.counts.likelihood}, "
          f"{model.config.counts.count_pooling}; per-gene EMD against half B")
    hurdle_column = " per-gene hurdle |" if lognorm else ""
    print(f"| time | cells in A, B | real split (A) | per-gene resampling |{hurdle_column} generated | "
          "count head on real sentences |")
    print("|---|---|---|---|" + ("---|" if lognorm else "") + "---|---|")
    for t in sorted(np.unique(times)):
        rows = rng.permutation(np.flatnonzero(np.isclose(times, t)))
        half = rows.size // 2
        part_a, part_b = rows[: min(half, args.max_cells)], rows[half:]
        real_a, real_b = values[part_a], values[part_b]
        n_a = part_a.size
        resampled = np.take_along_axis(real_a, rng.integers(0, n_a, real_a.shape), axis=0)
        generated = model.predict(float(t), n_cells=n_a, seed=args.seed)
        generated = lognorm_over_genes(generated.X, generated.var_names, genes, args.count_kind).toarray()

        with torch.no_grad():
            state, sentences = count_state_of_sentences(model, tokens[part_a], lengths[part_a], float(t), rng)
            # Depths as at generation (the neighbouring observed times'), not A's own.
            depth = model.spec.sample_library_sizes(float(t), n_a, rng)
            params = net.count_params(state, torch.as_tensor(depth, dtype=torch.float32), tokens=sentences)
            drawn = net.count_decoder.sample(params, generator=generator).numpy()
        drawn = lognorm_over_genes(drawn, np.asarray(genes), genes, args.count_kind).toarray()

        label = f"{t:g}" + (" (held out)" if np.isclose(t, args.holdout) else "")
        label += " (source)" if np.isclose(t, spec.source_time) else ""
        hurdle = f" {emd(hurdle_draw(real_a, n_a, rng), real_b):.3f} |" if lognorm else ""
        print(f"| {label} | {n_a}, {part_b.size} | {emd(real_a, real_b):.3f} | {emd(resampled, real_b):.3f} |{hurdle} "
              f"{emd(generated, real_b):.3f} | {emd(drawn, real_b):.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
