"""Plots of predictions against real cells, written by the demo, the benchmark and `sctrace plot` (PNG, no display)."""

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


def _dense(x) -> np.ndarray:
    return x.toarray() if sp.issparse(x) else np.asarray(x)


def pca_overlay(real, methods: dict[str, np.ndarray], path: str | Path, title: str = "", n_pcs: int = 2) -> Path:
    """One panel per method: its cells over the real cells, in the PCA of the real cells."""
    real = _dense(real).astype(np.float64)
    mean = real.mean(0)
    _, _, vt = np.linalg.svd(real - mean, full_matrices=False)
    axes_basis = vt[:n_pcs].T
    real_xy = (real - mean) @ axes_basis
    fig, axes = plt.subplots(1, len(methods), figsize=(4 * len(methods), 4), squeeze=False)
    for ax, (name, cells) in zip(axes[0], methods.items()):
        xy = (_dense(cells).astype(np.float64) - mean) @ axes_basis
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


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _palette(labels: np.ndarray) -> dict[str, tuple]:
    """A colour per distinct label (sorted), from tab10 up to 10 labels and tab20 beyond."""
    names = sorted(set(map(str, labels)))
    cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    return {name: cmap(i % cmap.N) for i, name in enumerate(names)}


def _scatter_by_label(ax, xy: np.ndarray, labels: np.ndarray, palette: dict[str, tuple], size: float = 4) -> None:
    labels = np.asarray(labels).astype(str)
    for name, colour in palette.items():
        chosen = labels == name
        if chosen.any():
            ax.scatter(xy[chosen, 0], xy[chosen, 1], s=size, color=colour, label=name)


def cell_type_labels(obs) -> np.ndarray | None:
    """``obs['cell_type']`` as strings when it exists with more than one category, else None."""
    if "cell_type" not in obs.columns or obs["cell_type"].nunique() < 2:
        return None
    return obs["cell_type"].astype(str).to_numpy()


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
    real = _dense(real).astype(np.float64)
    mean, basis = _real_pca(real, n_pcs)
    real_coords = (real - mean) @ basis
    coords = (_dense(cells).astype(np.float64) - mean) @ basis
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
    real = _dense(real).astype(np.float64)
    mean, basis = _real_pca(real, 2)
    real_coords = (real - mean) @ basis
    palette = _palette(real_cell_types)
    fig, axes = plt.subplots(1, len(methods) + 1, figsize=(4 * (len(methods) + 1), 4), squeeze=False)
    _scatter_by_label(axes[0, 0], real_coords, real_cell_types, palette)
    axes[0, 0].set_title("real cells")
    axes[0, 0].legend(loc="best", markerscale=3, fontsize=7)
    for ax, (name, cells) in zip(axes[0, 1:], methods.items()):
        coords = (_dense(cells).astype(np.float64) - mean) @ basis
        ax.scatter(real_coords[:, 0], real_coords[:, 1], s=4, c="lightgray")
        _scatter_by_label(ax, coords, nearest_labels(real, real_cell_types, cells, n_neighbour_pcs), palette)
        ax.set_title(f"{name} (type of nearest real cell)", fontsize=9)
    for ax in axes[0]:
        ax.set_xlabel("PC1 (real)")
        ax.set_ylabel("PC2 (real)")
    fig.suptitle(title)
    return _save(fig, path)


def time_variable_genes(expression, times: np.ndarray, genes: Sequence[str], n_genes: int = 8) -> list[str]:
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


def violin_genes(real, methods: dict[str, np.ndarray], genes: Sequence[str], chosen: Sequence[str],
                 path: str | Path, title: str = "") -> Path:
    """One panel per chosen gene: the distribution of its expression in the real cells and in each method's."""
    columns = [list(map(str, genes)).index(g) for g in chosen]
    sets = {"real": _dense(real), **{name: _dense(cells) for name, cells in methods.items()}}
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
    def from_prediction(cls, generated_embeddings: np.ndarray, generated_expression, gene_names: Sequence[str],
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
        rng = np.random.default_rng(seed)
        n_real = timecourse.adata.n_obs
        rows = np.sort(rng.choice(n_real, size=max_real_cells, replace=False)) if n_real > max_real_cells else np.arange(n_real)
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


def prediction_plots(plot_dir: str | Path, real, predictions: dict[str, np.ndarray], genes: Sequence[str], time: float,
                     all_expression, all_times: np.ndarray, real_cell_types: np.ndarray | None = None,
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

    from sctrace.data.io import parse_time, read_h5ad, read_timecourse
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
