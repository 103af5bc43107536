"""Cell and gene embedding analysis (paper §4.5, Fig. 2): which genes lie closest to each group of cells.

One call, :func:`analyze_embeddings` (CLI: ``sctrace analyze``), embeds an AnnData with a trained run, maps the
cell embeddings in 2-D coloured by obs columns, and ranks every gene for each group of cells by the mean cosine
similarity between the group's cell embeddings and the gene's embedding (top genes as a CSV and a dot plot).

Which embedding space
---------------------
A cell-gene cosine only means something when both vectors live in one space. TRACE has three gene tables: the
encoder's input table (``source_embedding.token``), the decoder's input table (``target_embedding.token``,
what :meth:`TRACE.gene_embeddings` returns) and the decoder's output layer (``token_head``, whose row ``w_g``
gives gene ``g`` the logit ``h @ w_g`` at a decoder state ``h``). Only the output layer shares a space with a
[CLS] state by construction: both are read off the decoder stack's final LayerNorm, and ``cos(h, w_g)`` is the
gene's logit up to norms. The input tables also barely move in training: ``nn.Embedding`` starts them at
N(0, 1) (row norm ~ sqrt(d)) and an Adam step moves a row by ~lr per coordinate, so after a few hundred steps
they are still their random start. Measured on the simulator (AUROC of a program's genes against all other
model genes, ranked by their mean cosine to a group of cells; 0.5 = chance; lineage_A cells -> lineage_A genes /
lineage_B -> lineage_B / second time point -> early / last time point -> late):

===============================  ===========================  =========================
cell state vs gene table         1200 x 300, tiny, 15 epochs  3000 x 1000, cpu-small
===============================  ===========================  =========================
encoder [CLS] vs an input table  0.40-0.62                    0.47-0.63
decoder [CLS] vs an input table  0.38-0.59                    0.46-0.61
encoder [CLS] vs output layer    0.78 / 0.85 / 0.95 / 0.85    0.77 / 0.83 / 0.89 / 0.94
decoder [CLS] vs output layer    0.78 / 0.92 / 0.97 / 0.85    0.91 / 0.95 / 0.95 / 0.97
===============================  ===========================  =========================

Same-program gene pairs are no closer than other pairs in either input table (pair AUROC 0.50 on the cpu-small
run) but are in the output layer (0.74-0.86 within the lineage, early and late programs).

So the analysis pairs the decoder's [CLS] state with the output layer's rows. A cell's decoder [CLS] is that of
its complete gene sentence at its own time, decoded against the encoder's reading of the same cell: the count
decoder is trained on exactly this state (complete target sentence), so it summarises the cell's expression; the
decoder is trained at every later time point, while the encoder only ever reads source-time cells; and a random
training source cell as memory instead changes the statistics by < 0.03.

The decoder never runs at the source time point in training (that time is the encoder's), so cells at the
source time are decoded at a time code it never saw and their rankings are less reliable: over four training
seeds of the tiny model the first time point gave its early genes AUROC 0.37-0.94, where the second gave
0.89-0.97. :func:`decoder_embeddings` warns when it embeds such cells.

Cell vectors are centred on their mean over the analysed cells before the cosine: every [CLS] state shares a
large common part (the [CLS] token, the LayerNorm bias) that otherwise dominates the cosines. Uncentred, the
encoder's groups share 92-95 % of their top-10 genes whatever the cell type, and the decoder's statistics above
drop to 0.64 / 0.68 / 0.86 / 0.52 (tiny) and 0.64 / 0.85 / 0.78 / 0.89 (cpu-small).
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import numpy as np
import pandas as pd
import typer

from sctrace._errors import SctraceInputError, option, option_name
from sctrace._threads import Threads, set_threads

if TYPE_CHECKING:
    import anndata as ad

    from sctrace.estimator import TRACE

__all__ = [
    "EmbeddingAnalysis", "analyze_command", "analyze_embeddings", "decoder_embeddings", "group_gene_scores",
    "group_labels",
]

CELL_KEY = "X_sctrace_decoder"
GENE_KEY = "sctrace_genes_output"
EMBEDDED_FILE = "embedded.h5ad"
TOP_GENES_FILE = "top_genes.csv"
_MAX_LABELS = 20  # numeric obs columns with more distinct values are coloured on a continuous scale


@dataclass
class EmbeddingAnalysis:
    """What :func:`analyze_embeddings` computed and wrote.

    Attributes
    ----------
    adata
        Copy of the input with ``obsm['X_sctrace']`` / ``varm['sctrace_genes']`` (as :meth:`TRACE.embed`) and the
        analysis space: ``obsm['X_sctrace_decoder']`` (n_cells, d) and ``varm['sctrace_genes_output']``
        (n_vars, d), NaN for genes the model does not know.
    top_genes
        Columns ``group, rank, gene, mean_cosine, fraction_expressing``: each group's ``n_top`` genes, rank 1 first.
    similarity
        (n_groups, n_model_genes) mean cosine of every group with every model gene (rows in group order).
    paths
        ``embedded``, ``top_genes``, ``map`` and ``dotplot`` -> the files written.
    """

    adata: ad.AnnData
    top_genes: pd.DataFrame
    similarity: pd.DataFrame
    paths: dict[str, Path] = field(default_factory=dict)


def decoder_embeddings(model: TRACE, adata: ad.AnnData, time_key: str | None = None, layer: str | None = None,
                       batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Decoder [CLS] state of every cell and output-layer row of every model gene (the module docstring says why).

    Parameters
    ----------
    model
        A trained :class:`sctrace.TRACE`.
    adata
        Cells with the model's genes; ``X`` (or ``layer``) holds what the model was fitted on (counts or
        log-normalised values).
    time_key
        obs column with each cell's time (default: the model's).

    Returns
    -------
    cells
        (n_cells, d) float32: decoder [CLS] of each cell's complete sentence at its own time, with the encoder's
        reading of the same cell at that time as memory. Cells at the model's source time get a warning: the
        decoder never ran at that time in training.
    genes
        (n_model_genes, d) float32 rows of the decoder's output layer, in ``model.spec.genes`` order.
    """
    import torch

    from sctrace.data.corpus import tokenize_with_spec
    from sctrace.data.times import parse_time
    from sctrace.model.module import N_SPECIAL, gather_sentences

    model._require_trained("decoder_embeddings")
    spec, net = model.spec, model.net
    key = time_key or spec.time_key
    if key not in adata.obs:
        raise SctraceInputError(
            f"obs has no time column '{key}'; the decoder embeds each cell at its own time, so pass "
            f"{option_name('time_key')} as the column holding it."
        )
    matrix = adata.layers[layer] if layer is not None else adata.X
    tokens, lengths = tokenize_with_spec(spec, matrix, adata.var_names)
    times = np.array([parse_time(v) for v in adata.obs[key].astype(str)], dtype=np.float32)
    at_source = int(np.isclose(times, spec.source_time).sum())
    if at_source:
        warnings.warn(
            f"{at_source} cells are at the source time {spec.source_time:g}, which the decoder never saw in training "
            "(it decodes the later time points); their embeddings and gene rankings are less reliable.",
            stacklevel=2,
        )
    net.eval()
    cells = []
    with torch.no_grad():
        for start in range(0, adata.n_obs, batch_size):
            chunk = slice(start, start + batch_size)
            sentences, chunk_times = gather_sentences(tokens, lengths, chunk), torch.as_tensor(times[chunk])
            memory, memory_pad = net.encode(sentences, chunk_times)
            cells.append(net.decode(sentences, chunk_times, memory, memory_pad)[:, 0].numpy())
    genes = net.token_head.weight[N_SPECIAL:].detach().cpu().numpy()
    return np.concatenate(cells), genes


def group_labels(column: pd.Series) -> tuple[np.ndarray, list[str]]:
    """String label of every cell and the groups in display order.

    Categories keep their order (unused ones are dropped), numbers are sorted numerically and written with
    ``%g`` (so time 10 comes after 2.5), anything else is sorted as text.

    Returns
    -------
    labels
        (n_cells,) str.
    order
        Distinct labels, each with at least one cell.
    """
    if isinstance(column.dtype, pd.CategoricalDtype):
        labels = column.astype(str).to_numpy()
        present = set(labels)
        return labels, [str(c) for c in column.cat.categories if str(c) in present]
    if pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column):
        values = column.to_numpy(dtype=np.float64)
        return np.array([f"{v:g}" for v in values]), [f"{v:g}" for v in np.unique(values)]
    labels = column.astype(str).to_numpy()
    return labels, sorted(set(labels))


def _centred(cells: np.ndarray) -> np.ndarray:
    """(n_cells, d) cell embeddings minus their mean: what the cosines are taken of (module docstring: why)."""
    cells = np.asarray(cells, dtype=np.float64)
    return cells - cells.mean(axis=0)


def group_gene_scores(cells: np.ndarray, genes: np.ndarray, groups: pd.Series,
                      gene_names: Sequence[str]) -> pd.DataFrame:
    """Mean cosine similarity of each group's centred cell embeddings with every gene embedding.

    Parameters
    ----------
    cells
        (n_cells, d) cell embeddings (e.g. :func:`decoder_embeddings`).
    genes
        (n_genes, d) gene embeddings in the same space.
    groups
        (n_cells,) obs column with each cell's group, without missing values.
    gene_names
        (n_genes,) names of the gene rows.

    Returns
    -------
    pd.DataFrame
        (n_groups, n_genes), rows in :func:`group_labels` order, indexed by group label.
    """
    from sctrace.harness.embedding_plots import group_gene_similarity

    labels, order = group_labels(groups)
    _, scores = group_gene_similarity(_centred(cells), genes, labels, order=order)
    return pd.DataFrame(scores, index=pd.Index(order, name=groups.name), columns=list(gene_names))


def _colouring(column: pd.Series) -> np.ndarray:
    """Labels for a map panel, or the numbers themselves when a numeric column has too many values to list."""
    if (pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)
            and column.nunique() > _MAX_LABELS):
        return column.to_numpy(dtype=np.float64)
    return group_labels(column)[0]


def _check_columns(adata: ad.AnnData, columns: Sequence[str], what: str) -> None:
    for name in columns:
        if name not in adata.obs.columns:
            available = ", ".join(map(str, adata.obs.columns)) or "none"
            raise SctraceInputError(
                f"{what} column '{name}' is not in obs (available: {available}); pass one of those."
            )


def _top_genes(similarity: pd.DataFrame, fractions: pd.DataFrame, n_top: int) -> pd.DataFrame:
    rows = []
    for group, scores in similarity.iterrows():
        order = np.argsort(-scores.to_numpy(), kind="stable")[:n_top]
        for rank, column in enumerate(order, start=1):
            gene = similarity.columns[column]
            rows.append((group, rank, gene, float(scores.iloc[column]), float(fractions.loc[group, gene])))
    return pd.DataFrame(rows, columns=["group", "rank", "gene", "mean_cosine", "fraction_expressing"])


def analyze_embeddings(
    model_or_run_dir: TRACE | str | os.PathLike,
    adata: ad.AnnData | str | os.PathLike,
    *,
    group_by: str,
    color_by: Sequence[str] = (),
    out_dir: str | os.PathLike,
    n_top: int = 10,
    layout: str = "umap",
    time_key: str | None = None,
    layer: str | None = None,
    seed: int = 0,
    overwrite: bool = False,
) -> EmbeddingAnalysis:
    """Embed cells and genes, map the cells, and rank each group's genes by mean cell-gene cosine similarity.

    Writes to ``out_dir``: ``embedded.h5ad`` (the input with the embeddings, see :class:`EmbeddingAnalysis`),
    ``embedding_<layout>.png`` (one panel per ``color_by`` column), ``top_genes.csv`` and
    ``dotplot_<group_by>.png`` (each group's top genes; colour = mean cosine, size = fraction of the group's
    cells expressing the gene, i.e. with a value > 0).

    Parameters
    ----------
    model_or_run_dir
        A trained :class:`sctrace.TRACE` or a run directory written by ``sctrace fit``.
    adata
        AnnData or ``.h5ad`` with the model's genes, the same kind of values as at fit (``X`` or ``layer``) and a
        time column.
    group_by
        obs column whose groups are compared with the genes (e.g. a cell type, or the time).
    color_by
        obs columns to colour the map by; default ``group_by`` and the time column.
    n_top
        Genes per group in the CSV and the dot plot.
    layout
        ``umap`` (seeded by ``seed``) or ``pca``.
    time_key
        obs column with each cell's time (default: the model's).
    overwrite
        Replace the files of an earlier analysis in ``out_dir``.

    Returns
    -------
    EmbeddingAnalysis
        The embedded AnnData, the top-gene table, the full group x gene similarity and the paths written.

    The cosines are between decoder [CLS] states (centred on their mean over the analysed cells) and the rows of
    the decoder's output layer; the module docstring gives the reasons and the measurements behind this choice.
    """
    import anndata as ad

    from sctrace.data.corpus import subset_genes
    from sctrace.data.io import read_h5ad
    from sctrace.estimator import TRACE
    from sctrace.harness.embedding_plots import embedding_dotplot, embedding_map

    if n_top < 1:
        raise SctraceInputError(f"n_top must be at least 1, got {n_top}.")
    if layout not in ("umap", "pca"):
        raise SctraceInputError(f"unknown layout '{layout}'; choose umap or pca.")
    out_dir = Path(out_dir)
    paths = {
        "embedded": out_dir / EMBEDDED_FILE,
        "top_genes": out_dir / TOP_GENES_FILE,
        "map": out_dir / f"embedding_{layout}.png",
        "dotplot": out_dir / f"dotplot_{re.sub(r'[^A-Za-z0-9_.-]+', '_', group_by)}.png",  # any obs name is a file name
    }
    existing = [str(p) for p in paths.values() if p.exists()]
    if existing and not overwrite:
        raise SctraceInputError(
            f"{existing[0]} already exists; pass {option('overwrite', True)} or another {option_name('out_dir')}."
        )

    if not isinstance(adata, ad.AnnData):
        adata = read_h5ad(adata)
    if adata.n_obs == 0:
        raise SctraceInputError("the AnnData has no cells; pass at least one cell per group.")
    model = model_or_run_dir if isinstance(model_or_run_dir, TRACE) else TRACE.load(model_or_run_dir)
    time_key = time_key or model.spec.time_key
    _check_columns(adata, [group_by], "group_by")
    _check_columns(adata, color_by, "color_by")
    missing_groups = int(adata.obs[group_by].isna().sum())
    if missing_groups:
        raise SctraceInputError(
            f"{missing_groups} cells have no value in obs['{group_by}']; fill them in or drop those cells first."
        )
    if not color_by:
        color_by = [group_by] + ([time_key] if time_key in adata.obs and time_key != group_by else [])

    embedded = model.embed(adata, time_key=time_key, layer=layer)
    cells, genes = decoder_embeddings(model, adata, time_key=time_key, layer=layer)
    gene_names = list(model.spec.genes)
    embedded.obsm[CELL_KEY] = cells
    table = np.full((adata.n_vars, genes.shape[1]), np.nan, dtype=np.float32)
    index = pd.Index(gene_names).get_indexer(adata.var_names.astype(str))
    table[index >= 0] = genes[index[index >= 0]]
    embedded.varm[GENE_KEY] = table
    embedded.uns["sctrace_embedding_analysis"] = {
        "group_by": group_by, "time_key": time_key, "cells": f"obsm['{CELL_KEY}']: decoder [CLS] at each cell's time",
        "genes": f"varm['{GENE_KEY}']: rows of the decoder's output layer", "centred": True,
    }

    similarity = group_gene_scores(cells, genes, adata.obs[group_by], gene_names)
    labels, order = group_labels(adata.obs[group_by])
    matrix = adata.layers[layer] if layer is not None else adata.X
    expressed = subset_genes(model.spec, matrix, adata.var_names) > 0
    # counted, not averaged: a sparse mean of booleans gives 0.9999999999999942 for "every cell"
    fractions = pd.DataFrame(
        np.stack([np.asarray(expressed[labels == name].sum(axis=0)).ravel() / np.sum(labels == name)
                  for name in order]),
        index=order, columns=gene_names,
    )
    top_genes = _top_genes(similarity, fractions, n_top)

    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = paths["embedded"].with_name(EMBEDDED_FILE + ".tmp")
    embedded.write_h5ad(tmp)
    tmp.replace(paths["embedded"])  # an interrupted write never leaves a truncated file
    top_genes.to_csv(paths["top_genes"], index=False)
    embedding_map(cells, {name: _colouring(adata.obs[name]) for name in color_by}, paths["map"], layout=layout,
                  seed=seed, title="sctrace cell embeddings (decoder [CLS])")
    embedding_dotplot(_centred(cells), genes, labels, expressed, gene_names, paths["dotplot"], n_top=n_top, order=order,
                      title=f"genes closest to each {group_by} group (mean cosine)")
    return EmbeddingAnalysis(embedded, top_genes, similarity, paths)


def analyze_command(
    run_dir: Annotated[Path, typer.Argument(help="Run directory written by `sctrace fit`.")],
    data: Annotated[Path, typer.Argument(help=".h5ad with the model's genes and a time column.")],
    out: Annotated[Path, typer.Option(help="Output folder (embedded.h5ad, top_genes.csv, PNG plots).")],
    group_by: Annotated[str, typer.Option(help="obs column whose groups are compared with the genes.")],
    color_by: Annotated[Optional[list[str]], typer.Option(help="obs column(s) to colour the map by (default: "
                                                          "--group-by and the time column).")] = None,
    n_top: Annotated[int, typer.Option(help="Genes per group in the table and the dot plot.")] = 10,
    layout: Annotated[str, typer.Option(help="umap | pca (UMAP compiles ~30 s on first use).")] = "umap",
    time_key: Annotated[Optional[str], typer.Option(help="obs column with the time (default: the model's).")] = None,
    layer: Annotated[Optional[str], typer.Option(help="Layer with the values fitted on (default X).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the UMAP layout.")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace an earlier analysis in --out.")] = False,
    threads: Threads = 1,
) -> None:
    """Cell and gene embeddings: a map of the cells and each group's closest genes (table and dot plot)."""
    set_threads(threads)
    result = analyze_embeddings(
        run_dir, data, group_by=group_by, color_by=color_by or (), out_dir=out, n_top=n_top, layout=layout,
        time_key=time_key, layer=layer, seed=seed, overwrite=overwrite,
    )
    for group, rows in result.top_genes.groupby("group", sort=False):
        typer.echo(f"{group_by}={group}: " + ", ".join(rows["gene"].head(5)))
    typer.echo("wrote " + ", ".join(str(path) for path in result.paths.values()))
