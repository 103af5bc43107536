"""The command line and the fit shared by the diagnostics that study one held-out time of a real data set."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path


def add_heldout_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", type=Path, help=".h5ad with raw counts (or log-normalised, see --count-kind)")
    parser.add_argument("--time-key", default="time")
    parser.add_argument("--holdout", type=float, required=True, help="time point to hold out")
    parser.add_argument("--count-kind", default="counts", choices=("counts", "lognorm"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--preset", default="cpu-small")
    parser.add_argument("--config", type=Path, default=None, help="YAML overriding the preset")


def data_missing(path: Path) -> bool:
    """True (after saying so) when the real data set is not on this machine: the script then skips."""
    if path.exists():
        return False
    print(f"skipped: {path} is not here (the real data sets live in ../shared/data/).")
    return True


def fit_heldout(args):
    """Read ``args.data`` and fit TRACE with ``args.holdout`` removed first (one torch thread, the run directory
    discarded), with the likelihood `sctrace benchmark` would choose. Returns (adata, each cell's time, model)."""
    import anndata as ad
    import numpy as np
    import torch

    from sctrace.estimator import TRACE
    from sctrace.harness.benchmark import sctrace_options

    torch.set_num_threads(1)
    adata = ad.read_h5ad(args.data)
    times = adata.obs[args.time_key].to_numpy(dtype=np.float64)
    overrides, _ = sctrace_options(args.preset, args.config, None, args.count_kind, None)
    model = TRACE(adata, args.time_key, holdout=args.holdout, count_kind=args.count_kind, preset=args.preset,
                  config=args.config, seed=args.seed, **overrides)
    with tempfile.TemporaryDirectory() as run_dir:
        model.fit(run_dir=Path(run_dir) / "run", progress=False)
    return adata, times, model


def heldout_arrays(adata, model, count_kind: str):
    """Every cell's log-normalised values over the model's genes, and its sentence: (values, tokens, lengths)."""
    from sctrace.data.corpus import tokenize_with_spec
    from sctrace.harness.evaluate import lognorm_over_genes

    spec = model.spec
    values = lognorm_over_genes(adata.X, adata.var_names, list(spec.genes), count_kind).toarray()
    tokens, lengths = tokenize_with_spec(spec, adata.X, adata.var_names)
    return values, tokens, lengths


def count_state_of_sentences(model, tokens, lengths, time: float, rng):
    """The state the count decoder reads when the decoder reconstructs these (real) sentences at ``time``, and
    the sentences as the decoder read them ([CLS] first; ``count_params`` takes them as ``tokens``).

    Source and context cells come from training pairs drawn with ``rng``, as at generation, and ``time`` itself is
    never context. Call under ``torch.no_grad()``.
    """
    import numpy as np

    from sctrace.model.module import gather_sentences

    spec, corpus, net = model.spec, model.corpus, model.net
    n_cells = len(tokens)
    pairs = corpus.pairs[rng.choice(len(corpus.pairs), n_cells)]
    context_columns = [k for k, v in enumerate(spec.time_values) if k > 0 and not np.isclose(v, time)]
    z0, pad = net.encode(gather_sentences(corpus.tokens, corpus.lengths, pairs[:, 0]), spec.source_time)
    context = [(gather_sentences(corpus.tokens, corpus.lengths, pairs[:, k]), spec.time_values[k])
               for k in context_columns]
    memory, memory_pad = net.build_context(z0, pad, context)
    target = gather_sentences(tokens, lengths, slice(0, n_cells))
    return net.count_state(net.decode(target, float(time), memory, memory_pad), target), target
