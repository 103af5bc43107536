import json

import anndata
import numpy as np
import pytest
import scipy.sparse as sp

from sctrace._errors import SctraceInputError
from sctrace.data.simulate import simulate_timecourse

TIMES = (0.0, 1.0, 2.5, 4.0, 6.0, 8.5)


@pytest.fixture(scope="module")
def adata():
    return simulate_timecourse(seed=0)


@pytest.fixture(scope="module")
def lognorm(adata):
    """normalize_total(1e4) + log1p, dense (cells, genes)."""
    totals = np.asarray(adata.X.sum(axis=1)).ravel()
    return np.log1p(adata.X.toarray() * (1e4 / totals[:, None]))


def _time_means(adata, values):
    """(n_times, n_genes) mean of values per time point, in time order."""
    times = adata.obs["time"].to_numpy()
    return np.stack([values[times == t].mean(axis=0) for t in np.unique(times)])


def _program(adata, name):
    return (adata.var["program"] == name).to_numpy()


def test_shape_dtypes_and_annotations(adata):
    assert adata.shape == (3000, 1200)
    assert sp.issparse(adata.X) and adata.X.format == "csr"
    assert adata.X.dtype == np.int32
    assert adata.X.data.min() > 0  # explicit zeros are not stored
    assert adata.obs_names.is_unique and adata.var_names.is_unique
    assert all(isinstance(name, str) for name in adata.obs_names[:5])
    obs = adata.obs
    assert obs["time"].dtype == np.float64 and obs["pseudotime"].dtype == np.float64
    for column in ("cell_type", "donor", "lineage"):
        assert obs[column].dtype == "category"
    assert set(obs["cell_type"].cat.categories) == {"progenitor", "intermediate", "lineage_A", "lineage_B"}
    programs = {"housekeeping", "early", "transient", "lineage_A", "lineage_B", "late"}
    assert set(adata.var["program"]) == programs
    assert adata.varm["donor_log_scale"].shape == (1200, 2)
    # Names say the program.
    for prefix, program in (("Trans_", "transient"), ("LinA_", "lineage_A"), ("Gene", "housekeeping")):
        named = adata.var_names.str.startswith(prefix)
        assert named.any() and (adata.var["program"][named] == program).all()


def test_time_points_donors_lineages(adata):
    obs = adata.obs
    assert sorted(obs["time"].unique()) == list(TIMES)
    assert obs["donor"].nunique() == 2 and obs["lineage"].nunique() == 2
    assert obs.groupby(["time", "donor"], observed=False).size().min() >= 10
    # Every cell type is present, and commitment to a lineage progresses with time.
    assert obs["cell_type"].value_counts().min() > 50
    committed = obs["cell_type"].isin(["lineage_A", "lineage_B"]).groupby(obs["time"]).mean().to_numpy()
    assert committed[0] == 0.0 and committed[-1] > 0.95
    assert (np.diff(committed) >= 0).all()


def test_json_safe_parameters_and_h5ad_round_trip(adata, tmp_path):
    simulation = adata.uns["simulation"]
    json.dumps(simulation)
    assert simulation["seed"] == 0 and simulation["times"] == list(TIMES)
    path = tmp_path / "sim.h5ad"
    adata.write_h5ad(path)
    back = anndata.read_h5ad(path)
    assert (back.X != adata.X).nnz == 0
    assert back.obs.equals(adata.obs)


def test_library_sizes_and_sparsity_are_droplet_like(adata):
    totals = np.asarray(adata.X.sum(axis=1)).ravel()
    assert 2000 <= np.median(totals) <= 6000
    sparsity = 1.0 - adata.X.nnz / np.prod(adata.shape)
    assert 0.7 <= sparsity <= 0.9
    # Log-normal size factors: library sizes vary within a single sample too.
    first_sample = ((adata.obs["time"] == 0.0) & (adata.obs["donor"] == "donor1")).to_numpy()
    assert 0.3 <= np.log(totals[first_sample]).std() <= 0.8


def test_gene_programs_and_expression_range(adata):
    counts = adata.X.toarray()
    housekeeping = _program(adata, "housekeeping")
    assert 200 <= (~housekeeping).sum() <= 500
    gene_means = counts.mean(axis=0)
    assert (gene_means < 0.1).mean() > 0.25  # many low-expressed genes
    assert np.percentile(gene_means[housekeeping], 99) / np.percentile(gene_means[housekeeping], 10) > 100
    # Housekeeping genes keep their raw mean over time; early genes switch off, late genes on.
    raw_time_means = _time_means(adata, counts)
    housekeeping_totals = raw_time_means[:, housekeeping].sum(axis=1)
    assert np.abs(housekeeping_totals / housekeeping_totals.mean() - 1).max() < 0.1
    early_totals = raw_time_means[:, _program(adata, "early")].sum(axis=1)
    late_totals = raw_time_means[:, _program(adata, "late")].sum(axis=1)
    assert early_totals[0] > 5 * early_totals[-1]
    assert late_totals[-1] > 5 * late_totals[0]


def test_transient_genes_make_middle_time_points_non_linear(adata, lognorm):
    means = _time_means(adata, lognorm)  # (times, genes)
    deviation = means[1:-1] - 0.5 * (means[:-2] + means[2:])  # middle point minus average of neighbours
    transient = _program(adata, "transient")
    peak = means[:, transient].argmax(axis=0)
    assert np.isin(peak, np.arange(1, len(TIMES) - 1)).mean() > 0.8
    for middle in range(1, len(TIMES) - 1):
        peaking_here = peak == middle
        assert peaking_here.sum() >= 5
        assert deviation[middle - 1, transient][peaking_here].mean() > 0.25
    # Housekeeping genes are linear in time (up to noise), an order of magnitude closer.
    housekeeping_deviation = np.abs(deviation[:, _program(adata, "housekeeping")])
    assert np.median(housekeeping_deviation) < 0.05


def test_lineage_genes_are_higher_in_their_lineage(adata, lognorm):
    cell_type = adata.obs["cell_type"].to_numpy()
    for own, other in (("lineage_A", "lineage_B"), ("lineage_B", "lineage_A")):
        genes = _program(adata, own)
        in_own = lognorm[cell_type == own][:, genes].mean()
        in_other = lognorm[cell_type == other][:, genes].mean()
        in_progenitors = lognorm[cell_type == "progenitor"][:, genes].mean()
        assert in_own > in_other + 0.4
        assert in_own > in_progenitors + 0.4


def test_pseudotime_advances_with_time_and_neighbours_overlap(adata):
    pseudotime = adata.obs["pseudotime"].to_numpy()
    times = adata.obs["time"].to_numpy()
    assert pseudotime.min() >= 0.0 and pseudotime.max() <= 1.0
    per_time = [pseudotime[times == t] for t in TIMES]
    assert (np.diff([np.median(p) for p in per_time]) > 0).all()
    for earlier, later in zip(per_time[:-1], per_time[1:]):
        assert np.median(earlier) < np.quantile(later, 0.05)  # time points stay distinct
    # ... but neighbours overlap a little.
    assert any(earlier.max() > later.min() for earlier, later in zip(per_time[:-1], per_time[1:]))
    assert min(p.std() for p in per_time) > 0.01


def test_donor_effect_matches_true_scaling(adata):
    donor = adata.obs["donor"].to_numpy()
    housekeeping = _program(adata, "housekeeping")
    counts = adata.X.toarray()
    expressed = housekeeping & (counts.mean(axis=0) > 0.5)
    # Raw means, not library-normalised ones: size factors do not depend on the donor, and the donor
    # scaling shifts every gene's share of the library.
    raw = counts[:, expressed]
    observed = np.log(raw[donor == "donor1"].mean(axis=0) / raw[donor == "donor2"].mean(axis=0))
    true_log_scale = adata.varm["donor_log_scale"][expressed]
    true = true_log_scale[:, 0] - true_log_scale[:, 1]
    scaled = true != 0
    assert scaled.sum() > 20
    assert np.corrcoef(observed[scaled], true[scaled])[0, 1] > 0.9
    assert np.median(np.abs(observed[~scaled])) < 0.1
    assert np.median(np.abs(observed[scaled])) > 0.2


def test_deterministic_and_independent_of_chunk_size(adata):
    again = simulate_timecourse(seed=0, chunk_size=333)  # steps straddle chunk and block boundaries
    assert (again.X != adata.X).nnz == 0
    assert again.obs.equals(adata.obs)
    assert again.var.equals(adata.var)


def test_different_seeds_differ():
    first = simulate_timecourse(n_cells=600, n_genes=150, seed=1)
    second = simulate_timecourse(n_cells=600, n_genes=150, seed=2)
    assert (first.X != second.X).nnz > 0.5 * first.X.nnz
    assert not np.allclose(first.obs["pseudotime"], second.obs["pseudotime"])


def test_small_sizes_custom_times_and_single_donor():
    adata = simulate_timecourse(n_cells=30, n_genes=100, times=[0, 3, 5], n_donors=1, seed=3, chunk_size=7)
    assert adata.shape == (30, 100)
    assert sorted(adata.obs["time"].unique()) == [0.0, 3.0, 5.0]
    assert adata.obs["time"].value_counts().min() == 10
    assert (adata.var["program"].value_counts() > 0).all()
    assert adata.X.dtype == np.int32


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_cells": 100}, "n_cells=100 is too few"),
        ({"n_cells": 3000.5}, "n_cells must be an integer"),
        ({"n_genes": 50}, "n_genes must be an integer >= 100"),
        ({"times": [0.0]}, "at least two"),
        ({"times": [0.0, 2.0, 1.0]}, "strictly increasing"),
        ({"times": [0.0, 1.0, 1.0]}, "strictly increasing"),
        ({"times": [0.0, np.nan]}, "finite"),
        ({"times": ["a", "b"]}, "real numbers"),
        ({"n_donors": 0}, "n_donors must be an integer >= 1"),
        ({"seed": -1}, "seed must be an integer >= 0"),
        ({"chunk_size": 0}, "chunk_size must be an integer >= 1"),
        ({"n_donors": True}, "n_donors must be an integer"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(SctraceInputError, match=match):
        simulate_timecourse(**kwargs)
