"""What does the decoder make of a time it was never trained at? Sentences generated on a grid of times.

sctrace is fitted once (the held-out time removed first), then generates cells at every time of a grid between
the first and last observed times. For each generated time it prints the Pearson r between how often each gene
appears in the generated sentences and how often it appears in the real sentences of each observed time
(tokenized with the model's gene medians). A decoder that interpolates moves its sentences from one observed
time's to the next as the time grows; one that cannot read the time code between its training times jumps.
The same with the context reduced to one observed time at a time shows whether the decoder tells the target
by which time is missing from its context (in training the target's own time is never context).

Real cells of the held-out time are read only for the comparison, never to fit or choose the model.

Command (Klein 2015, day 4 held out; about 2 min on one core)::

    .venv/bin/python benchmarks/time_response.py ../shared/data/klein2015_mesc.h5ad --time-key time_days --holdout 4
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
from _heldout_fit import add_heldout_arguments, data_missing, fit_heldout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_heldout_arguments(parser)
    parser.add_argument("--steps", type=int, default=6, help="grid points between consecutive observed times")
    args = parser.parse_args(argv)
    if data_missing(args.data):
        return 0

    import torch

    from sctrace.data.corpus import tokenize_with_spec
    from sctrace.generate import maskgit_generate
    from sctrace.model.module import N_SPECIAL, gather_sentences

    adata, times, model = fit_heldout(args)
    spec, corpus = model.spec, model.corpus
    tokens, _ = tokenize_with_spec(spec, adata.X, adata.var_names)

    def frequency(sentences: np.ndarray) -> np.ndarray:
        counts = np.zeros(spec.n_genes)
        genes = sentences[sentences >= N_SPECIAL] - N_SPECIAL
        np.add.at(counts, genes, 1.0)
        return counts / len(sentences)

    observed = np.unique(times)
    real = {t: frequency(tokens[np.isclose(times, t)]) for t in observed}
    n_cells = int(np.isclose(times, args.holdout).sum())

    def row(label: str, sentences: np.ndarray) -> str:
        f = frequency(sentences)
        return f"| {label} | " + " | ".join(f"{np.corrcoef(f, real[t])[0, 1]:.2f}" for t in observed) + " |"

    print(f"{args.data.name}, {args.holdout:g} held out (trained on {', '.join(f'{t:g}' for t in spec.time_values)}), "
          f"seed {args.seed}: r between gene frequencies in generated and real sentences\n")
    print("| generated at | " + " | ".join(f"real {t:g}" for t in observed) + " |")
    print("|---|" + "---|" * len(observed))
    grid = np.unique(np.concatenate([np.linspace(a, b, args.steps + 1) for a, b in zip(observed[:-1], observed[1:])]))
    for t in grid[grid > spec.source_time]:
        generated = model.predict(float(t), n_cells=n_cells, seed=args.seed)
        marker = " (held out)" if np.isclose(t, args.holdout) else (" (trained)" if np.any(np.isclose(t, spec.time_values)) else "")
        print(row(f"{t:.3g}{marker}", generated.obsm["sctrace_tokens"]))

    # The held-out time with one observed time as context, then none.
    rows = corpus.pairs[np.random.default_rng(args.seed).choice(len(corpus.pairs), n_cells)]
    columns = [k for k, t in enumerate(spec.time_values) if k > 0]
    net = model.net.eval()
    length = torch.full((n_cells,), spec.default_length(args.holdout))
    source = gather_sentences(corpus.tokens, corpus.lengths, rows[:, 0])
    print(f"\n| generated at {args.holdout:g}, context | " + " | ".join(f"real {t:g}" for t in observed) + " |")
    print("|---|" + "---|" * len(observed))
    for label, chosen in [(f"{spec.time_values[k]:g} only", [k]) for k in columns] + [("none", [])]:
        context = [(gather_sentences(corpus.tokens, corpus.lengths, rows[:, k]), spec.time_values[k]) for k in chosen]
        sentences, _ = maskgit_generate(net, source, spec.source_time, context, args.holdout, length,
                                        n_iter=model.config.generation.n_iter,
                                        temperature=model.config.generation.temperature,
                                        schedule=model.config.training.mask_schedule,
                                        generator=torch.Generator().manual_seed(args.seed))
        print(row(label, sentences.numpy()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
