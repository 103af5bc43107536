"""Cell and gene embeddings of any AnnData under a fitted model (``TRACE.embed``)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import anndata as ad
import numpy as np
import pandas as pd
import torch

from sctrace._errors import SctraceInputError, option_name
from sctrace.data.corpus import tokenize_with_spec
from sctrace.data.io import check_expression, parse_time, read_h5ad
from sctrace.model.module import gather_sentences

if TYPE_CHECKING:
    from sctrace.estimator import TRACE


def embed_cells(model: TRACE, adata: ad.AnnData | str | os.PathLike, time_key: str | None, layer: str | None,
                batch_size: int) -> ad.AnnData:
    """``TRACE.embed`` once the model is known to be trained: each cell's [CLS] state at its own time."""
    if not isinstance(adata, ad.AnnData):
        adata = read_h5ad(adata)
    spec = model.spec
    key = time_key or spec.time_key
    if key not in adata.obs:
        raise SctraceInputError(
            f"time column {key!r} is not in adata.obs; pass {option_name('time_key')} as one of the obs columns "
            f"{', '.join(repr(str(c)) for c in adata.obs.columns[:10]) or '(none)'}, or add each cell's time."
        )
    check_expression(adata, layer, spec.count_kind)
    matrix = adata.layers[layer] if layer is not None else adata.X
    tokens, lengths = tokenize_with_spec(spec, matrix, adata.var_names)
    times = np.array([parse_time(v) for v in adata.obs[key].astype(str)], dtype=np.float32)
    model.net.eval()
    cells = []
    with torch.no_grad():
        for start in range(0, adata.n_obs, batch_size):
            chunk = slice(start, start + batch_size)
            z, _ = model.net.encode(gather_sentences(tokens, lengths, chunk), torch.as_tensor(times[chunk]))
            cells.append(z[:, 0].numpy())
    out = adata.copy()
    out.obsm["X_sctrace"] = np.concatenate(cells) if cells else np.zeros((0, model.config.network.d_model), np.float32)
    genes = model.gene_embeddings()
    table = np.full((adata.n_vars, genes.shape[1]), np.nan, dtype=np.float32)
    index = pd.Index(spec.genes).get_indexer(adata.var_names.astype(str))
    table[index >= 0] = genes[index[index >= 0]]
    out.varm["sctrace_genes"] = table
    return out
