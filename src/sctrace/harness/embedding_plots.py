"""Plots of the model's embeddings: the 2-D layout of cells and genes, and gene-group similarity and dot plots."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import scipy.sparse as sp  # noqa: E402

from sctrace._errors import SctraceInputError  # noqa: E402
from sctrace.data.timecourse import capped_rows  # noqa: E402
from sctrace.harness.plot_common import _palette, _save, _scatter_by_label, cell_type_labels


def layout_2d(points: np.ndarray, layout: str = "umap", seed: int = 0) -> np.ndarray:
    """(n, d) points -> (n, 2): UMAP (umap-learn, seeded; compiles for ~30 s on first use) or the first two PCs."""
    points = np.asarray(points, dtype=np.float64)
    if layout == "pca" or len(points) < 5:
        centred = points - points.mean(0)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        coords = centred @ vt[:2].T
        return np.pad(coords, ((0, 0), (0, 2 - coords.shape[1])))
    if layout != "umap":
        raise SctraceInputError(f"unknown layout '{layout}'; choose umap or pca.")
    import umap

    return umap.UMAP(n_neighbors=min(15, len(points) - 1), random_state=seed, n_jobs=1).fit_transform(points)


def embedding_map(cells: np.ndarray, colourings: dict[str, np.ndarray], path: str | Path, layout: str = "umap",
                  seed: int = 0, title: str = "") -> Path:
    """One panel per colouring of the same 2-D layout of (n, d) cell embeddings.

    A colouring of labels gets a colour per label and a legend; a float colouring (e.g. pseudotime) a continuous
    colour scale.
    """
    xy = layout_2d(cells, layout, seed)
    fig, axes = plt.subplots(1, len(colourings), figsize=(5 * len(colourings), 4.5), squeeze=False)
    for ax, (name, labels) in zip(axes[0], colourings.items()):
        labels = np.asarray(labels)
        if labels.dtype.kind == "f":
            dots = ax.scatter(xy[:, 0], xy[:, 1], s=5, c=labels, cmap="viridis")
            fig.colorbar(dots, ax=ax, label=name)
        else:
            _scatter_by_label(ax, xy, labels, _palette(labels), size=5)
            ax.legend(loc="best", markerscale=3, fontsize=6)
        ax.set_title(f"coloured by {name}")
        ax.set_xlabel(f"{layout.upper()} 1")
        ax.set_ylabel(f"{layout.upper()} 2")
    fig.suptitle(title)
    return _save(fig, path)


def group_gene_similarity(cell_embeddings: np.ndarray, gene_embeddings: np.ndarray, groups: np.ndarray,
                          order: Sequence[str] | None = None) -> tuple[list[str], np.ndarray]:
    """Mean cosine similarity between the cells of each group and every gene.

    ``S[g, j] = mean_{i in g} cos(c_i, e_j)``, computed as the mean of the unit cell vectors of a group
    dotted with the unit gene vectors (cosine is linear in each unit vector).

    Parameters
    ----------
    cell_embeddings
        (n_cells, d) cell embeddings.
    gene_embeddings
        (n_genes, d) gene embeddings in the same space.
    groups
        (n_cells,) group label of each cell.
    order
        The groups (as strings) in the order of the rows; default the distinct groups, sorted. Each must have
        at least one cell.

    Returns
    -------
    names
        The groups, in row order.
    similarity
        (n_groups, n_genes) float64 mean cosine similarities.
    """
    cells = np.asarray(cell_embeddings, dtype=np.float64)
    genes = np.asarray(gene_embeddings, dtype=np.float64)
    if cells.shape[1] != genes.shape[1]:
        raise SctraceInputError(
            f"cell embeddings have {cells.shape[1]} dimensions but gene embeddings {genes.shape[1]}; pass both from "
            "the same model."
        )
    unit_cells = cells / np.maximum(np.linalg.norm(cells, axis=1, keepdims=True), 1e-12)
    unit_genes = genes / np.maximum(np.linalg.norm(genes, axis=1, keepdims=True), 1e-12)
    groups = np.asarray(groups).astype(str)
    names = sorted(set(groups)) if order is None else [str(name) for name in order]
    empty = [name for name in names if not (groups == name).any()]
    if empty:
        raise SctraceInputError(f"group '{empty[0]}' has no cells; leave it out of the groups to compare.")
    group_means = np.stack([unit_cells[groups == name].mean(0) for name in names])
    return names, group_means @ unit_genes.T


def embedding_dotplot(cell_embeddings: np.ndarray, gene_embeddings: np.ndarray, groups: np.ndarray, expressed,
                      gene_names: Sequence[str], path: str | Path, n_top: int = 3, title: str = "",
                      order: Sequence[str] | None = None) -> Path:
    """Dot plot: rows = groups, columns = each group's ``n_top`` genes by mean cell-gene cosine similarity.

    Colour is the mean cosine similarity (:func:`group_gene_similarity`, rows in ``order``); dot size is the
    fraction of the group's cells that express the gene (``expressed``: (n_cells, n_genes) values > 0 count as
    expressed).
    """
    names, similarity = group_gene_similarity(cell_embeddings, gene_embeddings, groups, order=order)
    groups = np.asarray(groups).astype(str)
    columns = list(dict.fromkeys(int(j) for row in similarity for j in np.argsort(-row, kind="stable")[:n_top]))
    expressed = sp.csr_matrix(expressed) if sp.issparse(expressed) else np.asarray(expressed)
    fractions = np.stack([np.asarray((expressed[groups == name][:, columns] > 0).mean(axis=0)).ravel()
                          for name in names])
    fig, ax = plt.subplots(figsize=(max(4.0, 0.45 * len(columns) + 2.5), max(2.5, 0.45 * len(names) + 1.5)))
    xx, yy = np.meshgrid(np.arange(len(columns)), np.arange(len(names)))
    dots = ax.scatter(xx.ravel(), yy.ravel(), s=20 + 280 * fractions.ravel(), c=similarity[:, columns].ravel(),
                      cmap="viridis", edgecolors="black", linewidths=0.3)
    ax.set_xticks(range(len(columns)), [str(gene_names[j]) for j in columns], rotation=90, fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    fig.colorbar(dots, ax=ax, label="mean cosine(cell, gene)")
    for fraction in (0.25, 0.5, 1.0):
        ax.scatter([], [], s=20 + 280 * fraction, c="white", edgecolors="black", label=f"{fraction:.0%} expressing")
    ax.legend(loc="upper left", bbox_to_anchor=(1.25, 1), fontsize=7, frameon=False)
    ax.set_title(title or "cell-gene embedding similarity", fontsize=9)
    return _save(fig, path)


@dataclass
class EmbeddingView:
    """sctrace cell embeddings to map, their colourings and, with a run, what the dot plot needs.

    Attributes
    ----------
    cells
        (n, d) cell embeddings (real cells first, then generated ones, when both are there).
    colourings
        Colouring name -> (n,) labels.
    groups
        (n,) group of each cell for the dot plot.
    expressed
        (n, n_genes) expression (> 0 counts as expressed) over ``gene_names``.
    gene_embeddings
        (n_genes, d) gene embeddings of the run, or None (no dot plot).
    gene_names
        (n_genes,) names of the genes.
    """

    cells: np.ndarray
    colourings: dict[str, np.ndarray]
    groups: np.ndarray
    expressed: object
    gene_embeddings: np.ndarray | None
    gene_names: list[str]

    @classmethod
    def from_prediction(cls, generated_embeddings: np.ndarray, generated_expression, gene_names: Sequence[str] | np.ndarray,
                        time: float, generated_types: np.ndarray | None = None) -> EmbeddingView:
        """Generated cells alone (their ``obsm['X_sctrace']``), coloured by ``generated_types`` when given."""
        label = np.full(len(generated_embeddings), f"generated t={time:g}")
        colourings = {"time": label} if generated_types is None else {"nearest real cell type": generated_types}
        return cls(np.asarray(generated_embeddings), colourings, label, generated_expression, None, list(gene_names))

    @classmethod
    def from_run(cls, run_dir: str | Path, generated_counts, generated_expression, time: float, timecourse,
                 generated_types: np.ndarray | None = None, max_real_cells: int = 3000, seed: int = 0) -> EmbeddingView:
        """Real cells of every time point (up to ``max_real_cells``, seeded) and the generated cells, embedded alike.

        Both sets go through the run's encoder (:meth:`TRACE.embed`): a prediction's own ``obsm['X_sctrace']`` is
        the decoder's [CLS] state, another space than the encoder's, so mixing the two would separate generated
        from real cells for no biological reason.

        Parameters
        ----------
        run_dir
            The run that generated the cells.
        generated_counts
            (n_generated, n_genes) generated counts over the run's genes (a prediction's ``X``).
        generated_expression
            (n_generated, n_genes) the same, log-normalised (for the fraction of expressing cells).
        time
            Time of the generated cells.
        timecourse
            The real data (:class:`sctrace.data.io.TimeCourse`).
        generated_types
            (n_generated,) a cell type per generated cell (e.g. :func:`nearest_labels`), or None.
        """
        import anndata as ad

        from sctrace.estimator import TRACE

        model = TRACE.load(run_dir)
        time_key, genes = model.spec.time_key, list(model.spec.genes)
        rows = capped_rows(np.arange(timecourse.adata.n_obs), max_real_cells, seed)
        real = ad.AnnData(sp.csr_matrix(timecourse.expression()[rows]),
                          obs=pd.DataFrame({time_key: timecourse.times[rows]}, index=[f"real_{i}" for i in rows]))
        real.var_names = timecourse.gene_names()
        n_generated = generated_counts.shape[0]
        generated = ad.AnnData(sp.csr_matrix(generated_counts),
                               obs=pd.DataFrame({time_key: np.full(n_generated, time)},
                                                index=[f"generated_{i}" for i in range(n_generated)]))
        generated.var_names = genes
        embeddings = np.concatenate([model.embed(real).obsm["X_sctrace"], model.embed(generated).obsm["X_sctrace"]])

        generated_label = f"generated t={time:g}"
        real_times = np.array([f"{t:g}" for t in timecourse.times[rows]])
        colourings = {"time": np.concatenate([real_times, np.full(n_generated, generated_label)])}
        types = cell_type_labels(timecourse.adata.obs)
        if types is not None:
            generated_part = (np.full(n_generated, generated_label) if generated_types is None
                              else np.char.add(np.asarray(generated_types).astype(str), " (generated)"))
            colourings["cell type"] = np.concatenate([types[rows], generated_part])
        groups = np.concatenate([real_times if types is None else types[rows], np.full(n_generated, generated_label)])
        expressed = sp.vstack([sp.csr_matrix(real[:, genes].X), sp.csr_matrix(generated_expression)])
        return cls(embeddings, colourings, groups, expressed, model.gene_embeddings(), genes)
