"""The one ``--threads`` option every command takes, and what it sets."""

from __future__ import annotations

from typing import Annotated

import typer

Threads = Annotated[
    int,
    typer.Option(min=1, help="torch/BLAS threads; 1 is the safe default on a shared machine (small layers slow down "
                 "badly when threads compete for cores)."),
]


def set_threads(threads: int, torch_too: bool = True) -> None:
    """Limit BLAS threads and, unless the caller never uses torch (the baselines), torch's own."""
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(max(1, threads))
    except ImportError:  # numpy then keeps its own default; torch is what matters for speed here
        pass
    if torch_too:
        import torch

        torch.set_num_threads(max(1, threads))
