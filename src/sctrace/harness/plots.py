"""Plots of predictions against real cells, written by the demo, the benchmark and `sctrace plot` (PNG, no display)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from sctrace._errors import SctraceInputError  # noqa: E402
from sctrace.data.arrays import dense

# group_gene_similarity and layout_2d are re-exported: their import path from before embedding_plots existed.
from sctrace.harness.embedding_plots import EmbeddingView, embedding_dotplot, embedding_map, group_gene_similarity, layout_2d  # noqa: F401
from sctrace.harness.plot_common import _palette, _save, _scatter_by_label, cell_type_labels


def pca_overlay(real, methods: dict[str, np.ndarray], path: str | Path, title: str = "", n_pcs: int = 2) -> Path:
    """One panel per method: its cells over the real cells, in the PCA of the real cells."""
    real = dense(real, np.float64)
    mean = real.mean(0)
    _, _, vt = np.linalg.svd(real - mean, full_matrices=False)
    axes_basis = vt[:n_pcs].T
    real_xy = (real - mean) @ axes_basis
    fig, axes = plt.subplots(1, len(methods), figsize=(4 * len(methods), 4), squeeze=False)
    for ax, (name, cells) in zip(axes[0], methods.items()):
        xy = (dense(cells, np.float64) - mean) @ axes_basis
        ax.scatter(real_xy[:, 0], real_xy[:, 1], s=4, c="lightgray", label="real")
        ax.scatter(xy[:, 0], xy[:, 1], s=4, alpha=0.6, label=name)
        ax.set_title(name)
        ax.set_xlabel("PC1 (real)")
        ax.set_ylabel("PC2 (real)")
        ax.legend(loc="best", markerscale=3, fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _real_pca(real: np.ndarray, n_pcs: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (n_genes, n_pcs) axes of the real cells' PCA (at least 2 axes)."""
    mean = real.mean(0)
    _, _, vt = np.linalg.svd(real - mean, full_matrices=False)
    return mean, vt[: max(2, min(n_pcs, vt.shape[0]))].T


def nearest_labels(real, real_labels: np.ndarray, cells, n_pcs: int = 20) -> np.ndarray:
    """Label of each cell's nearest real cell (Euclidean, in the first ``n_pcs`` PCs of the real cells).

    Parameters
    ----------
    real
        (n_real, n_genes) log-normalised real cells, dense or sparse.
    real_labels
        (n_real,) label of each real cell (e.g. its cell type).
    cells
        (n, n_genes) cells to label, e.g. generated ones.

    Returns
    -------
    np.ndarray
        (n,) labels.
    """
    real = dense(real, np.float64)
    mean, basis = _real_pca(real, n_pcs)
    real_coords = (real - mean) @ basis
    coords = (dense(cells, np.float64) - mean) @ basis
    distances = (coords**2).sum(1)[:, None] + (real_coords**2).sum(1)[None, :] - 2.0 * coords @ real_coords.T
    return np.asarray(real_labels).astype(str)[np.argmin(distances, axis=1)]


def pca_cell_types(real, real_cell_types: np.ndarray, methods: dict[str, np.ndarray], path: str | Path,
                   title: str = "", n_neighbour_pcs: int = 20) -> Path:
    """The real cells coloured by cell type, then each method's cells coloured by their nearest real cell's type.

    Generated cells carry no cell type; the type of the nearest real cell (Euclidean, in the first
    ``n_neighbour_pcs`` PCs of the real cells) shows whether a method keeps the composition of the real cells.

    Parameters
    ----------
    real
        (n_real, n_genes) log-normalised real cells, dense or sparse.
    real_cell_types
        (n_real,) cell type of each real cell.
    methods
        Method name -> (n_cells, n_genes) log-normalised generated cells.
    """
    real = dense(real, np.float64)
    mean, basis = _real_pca(real, 2)
    real_coords = (real - mean) @ basis
    palette = _palette(real_cell_types)
    fig, axes = plt.subplots(1, len(methods) + 1, figsize=(4 * (len(methods) + 1), 4), squeeze=False)
    _scatter_by_label(axes[0, 0], real_coords, real_cell_types, palette)
    axes[0, 0].set_title("real cells")
    axes[0, 0].legend(loc="best", markerscale=3, fontsize=7)
    for ax, (name, cells) in zip(axes[0, 1:], methods.items()):
        coords = (dense(cells, np.float64) - mean) @ basis
        ax.scatter(real_coords[:, 0], real_coords[:, 1], s=4, c="lightgray")
        _scatter_by_label(ax, coords, nearest_labels(real, real_cell_types, cells, n_neighbour_pcs), palette)
        ax.set_title(f"{name} (type of nearest real cell)", fontsize=9)
    for ax in axes[0]:
        ax.set_xlabel("PC1 (real)")
        ax.set_ylabel("PC2 (real)")
    fig.suptitle(title)
    return _save(fig, path)


def time_variable_genes(expression, times: np.ndarray, genes: Sequence[str] | np.ndarray, n_genes: int = 8) -> list[str]:
    """The genes whose mean expression varies most across time points.

    Parameters
    ----------
    expression
        (n_cells, n_genes) log-normalised cells, dense or sparse.
    times
        (n_cells,) time of each cell.
    genes
        (n_genes,) names of the columns.
    n_genes
        How many to return.

    Returns
    -------
    list of str
        Gene names by decreasing variance of the per-time-point means.
    """
    times = np.asarray(times, dtype=np.float64)
    means = np.stack([np.asarray(expression[times == t].mean(axis=0)).ravel() for t in np.unique(times)])
    order = np.argsort(-means.var(axis=0), kind="stable")[:n_genes]
    return [str(genes[i]) for i in order]


def violin_genes(real, methods: dict[str, np.ndarray], genes: Sequence[str] | np.ndarray, chosen: Sequence[str],
                 path: str | Path, title: str = "") -> Path:
    """One panel per chosen gene: the distribution of its expression in the real cells and in each method's."""
    columns = [list(map(str, genes)).index(g) for g in chosen]
    sets = {"real": dense(real), **{name: dense(cells) for name, cells in methods.items()}}
    n_cols = min(4, len(columns))
    n_rows = int(np.ceil(len(columns) / n_cols))
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(3.2 * n_cols, 2.8 * n_rows), squeeze=False)
    colours = plt.get_cmap("tab10")
    for ax, gene, column in zip(axes.ravel(), chosen, columns):
        for position, (name, cells) in enumerate(sets.items()):
            values = np.asarray(cells[:, column], dtype=np.float64).ravel()
            if np.ptp(values) > 0:
                body = ax.violinplot(values, positions=[position], showmedians=True, widths=0.8)
                for part in body["bodies"]:
                    part.set_facecolor("lightgray" if name == "real" else colours(position % 10))
            else:  # a kernel density of a constant is undefined; draw the constant
                ax.hlines(values[0], position - 0.3, position + 0.3, color="black")
        ax.set_xticks(range(len(sets)), list(sets), rotation=45, ha="right", fontsize=7)
        ax.set_title(gene, fontsize=9)
    for ax in axes.ravel()[len(columns):]:
        ax.set_visible(False)
    axes[0, 0].set_ylabel("log-normalised expression")
    fig.suptitle(title)
    return _save(fig, path)


def prediction_plots(plot_dir: str | Path, real, predictions: dict[str, np.ndarray], genes: Sequence[str] | np.ndarray,
                     time: float, all_expression, all_times: np.ndarray, real_cell_types: np.ndarray | None = None,
                     embedding: EmbeddingView | None = None, layout: str = "umap") -> list[Path]:
    """Write every plot of predictions at one time point to ``plot_dir``; returns the files written.

    ``pca.png`` (each method over the real cells), ``pca_cell_type.png`` (with cell types), ``violins.png``
    (the 8 genes whose mean varies most across the time points of ``all_expression``), and with
    ``embedding`` ``embedding_<layout>.png`` and, when it holds gene embeddings, ``dotplot.png``.

    Parameters
    ----------
    real
        (n_real, n_genes) log-normalised real cells at ``time``.
    predictions
        Method name -> (n, n_genes) log-normalised generated cells.
    genes
        (n_genes,) names of the columns.
    all_expression, all_times
        (n_all, n_genes) log-normalised cells of every time point and their (n_all,) times.
    """
    plot_dir = Path(plot_dir)
    plot_dir.mkdir(parents=True, exist_ok=True)
    title = f"time {time:g}"
    written = [pca_overlay(real, predictions, plot_dir / "pca.png", title=title)] if predictions else []
    if predictions and real_cell_types is not None and len(set(real_cell_types)) > 1:
        written.append(pca_cell_types(real, real_cell_types, predictions, plot_dir / "pca_cell_type.png", title=title))
    if predictions:
        chosen = time_variable_genes(all_expression, all_times, genes, n_genes=8)
        written.append(violin_genes(real, predictions, genes, chosen, plot_dir / "violins.png",
                                    title=f"{title}: the most time-variable genes"))
    if embedding is not None:
        written.append(embedding_map(embedding.cells, embedding.colourings, plot_dir / f"embedding_{layout}.png",
                                     layout=layout, title="sctrace cell embeddings"))
        if embedding.gene_embeddings is not None:
            written.append(embedding_dotplot(embedding.cells, embedding.gene_embeddings, embedding.groups,
                                             embedding.expressed, embedding.gene_names, plot_dir / "dotplot.png"))
    return written


def plot_prediction(pred, data, time_key: str, time, out_dir: str | Path, *, run_dir: str | Path | None = None,
                    layer: str | None = None, layout: str = "umap", name: str = "sctrace") -> list[Path]:
    """The plots of ``sctrace plot``: a prediction (AnnData or .h5ad) against the real cells of ``data`` at ``time``.

    With ``run_dir`` the real cells of every time point and the generated cells are embedded by the run's encoder
    and a dot plot is drawn; without it the map shows the prediction's own ``obsm['X_sctrace']`` alone (when
    present) and there is no dot plot. Generated cells are given the cell type of their nearest real cell.
    """
    import anndata as ad

    from sctrace.data.io import read_h5ad, read_timecourse
    from sctrace.data.times import parse_time
    from sctrace.harness.evaluate import lognorm_over_genes, run_spec, scoring_cells

    if not isinstance(pred, ad.AnnData):
        pred = read_h5ad(pred, what="prediction file")
    count_kind = str(pred.uns.get("sctrace", {}).get("count_kind", "counts"))
    timecourse = read_timecourse(data, time_key, layer=layer, count_kind=count_kind)
    time = parse_time(time)
    genes = np.asarray(pred.var_names).astype(str)
    gene_names = timecourse.gene_names()
    cells = scoring_cells(timecourse.expression(), timecourse.times, gene_names, genes, time, count_kind)
    predicted = lognorm_over_genes(pred.X, genes, genes, count_kind, what="the prediction")
    all_expression = lognorm_over_genes(timecourse.expression(), gene_names, genes, count_kind)
    types = cell_type_labels(timecourse.adata.obs)
    real_types = None if types is None else types[cells.real_rows]
    generated_types = None if real_types is None else nearest_labels(cells.real, real_types, predicted)
    embedding = None
    if run_dir is not None:
        if list(run_spec(run_dir).genes) != list(genes):
            raise SctraceInputError(f"the prediction's genes differ from those of the run in {run_dir}; pass the run "
                                    "that made the prediction.")
        embedding = EmbeddingView.from_run(run_dir, pred.X, predicted, time, timecourse, generated_types)
    elif "X_sctrace" in pred.obsm:
        embedding = EmbeddingView.from_prediction(pred.obsm["X_sctrace"], predicted, genes, time, generated_types)
    return prediction_plots(out_dir, cells.real, {name: predicted.toarray()}, genes, time, all_expression,
                            timecourse.times, real_cell_types=real_types, embedding=embedding, layout=layout)
