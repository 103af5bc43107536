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

    from sctrace.benchmark import sctrace_options
    from sctrace.estimator import TRACE

    torch.set_num_threads(1)
    adata = ad.read_h5ad(args.data)
    times = adata.obs[args.time_key].to_numpy(dtype=np.float64)
    overrides, _ = sctrace_options(args.preset, args.config, None, args.count_kind, None)
    model = TRACE(adata, args.time_key, holdout=args.holdout, count_kind=args.count_kind, preset=args.preset,
                  config=args.config, seed=args.seed, **overrides)
    with tempfile.TemporaryDirectory() as run_dir:
        model.fit(run_dir=Path(run_dir) / "run", progress=False)
    return adata, times, model
