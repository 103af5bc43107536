"""Tests of reading and validating time-course AnnData: every error message, label mapping, layers, backed mode."""

import anndata
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse

from sctrace._errors import SctraceInputError
from sctrace.data import io
from sctrace.data.io import COUNT_KINDS, check_holdout, parse_time, read_timecourse


def _make_adata(
    n_cells: int = 12, n_genes: int = 6, *, times=None, sparse: bool = True, seed: int = 0
) -> anndata.AnnData:
    """Small AnnData with integer counts, a numeric time column and a cell type column."""
    rng = np.random.default_rng(seed)
    counts = rng.poisson(2.0, size=(n_cells, n_genes)).astype(np.float32)
    if times is None:
        times = np.repeat([0.0, 1.0, 3.0], n_cells // 3)
    obs = pd.DataFrame(
        {"time": times, "cell_type": rng.choice(["B", "T"], size=n_cells)},
        index=[f"cell{i}" for i in range(n_cells)],
    )
    var = pd.DataFrame({"symbol": [f"G{j}" for j in range(n_genes)]}, index=[f"ENSG{j}" for j in range(n_genes)])
    adata = anndata.AnnData(X=scipy.sparse.csr_matrix(counts) if sparse else counts, obs=obs, var=var)
    adata.layers["counts"] = adata.X.copy()
    return adata


# ---------------------------------------------------------------- reading files


def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / "nope.h5ad"
    with pytest.raises(SctraceInputError, match=r"input file '.*nope\.h5ad' does not exist; check the path"):
        read_timecourse(path)


def test_text_file_is_not_anndata(tmp_path):
    path = tmp_path / "cells.h5ad"
    path.write_text("gene,cell\n")
    with pytest.raises(SctraceInputError, match=r"'.*cells\.h5ad' is not an AnnData \.h5ad file; save your data with"):
        read_timecourse(path)


def test_plain_hdf5_file_is_not_anndata(tmp_path):
    path = tmp_path / "matrix.h5"
    with h5py.File(path, "w") as handle:
        handle["matrix"] = np.zeros((3, 3))
    with pytest.raises(SctraceInputError, match=r"'.*matrix\.h5' is not an AnnData \.h5ad file"):
        read_timecourse(path, backed=True)


def test_reads_written_file_in_memory(tmp_path):
    path = tmp_path / "data.h5ad"
    _make_adata().write_h5ad(path)
    tc = read_timecourse(str(path))
    assert not tc.adata.isbacked
    np.testing.assert_array_equal(tc.time_values, [0.0, 1.0, 3.0])


@pytest.mark.parametrize("sparse", [True, False])
def test_backed_reading_keeps_x_on_disk_and_validates(tmp_path, monkeypatch, sparse):
    adata = _make_adata(sparse=sparse)
    path = tmp_path / "data.h5ad"
    adata.write_h5ad(path)
    monkeypatch.setattr(io, "_CHUNK_VALUES", 5)  # force many chunks
    tc = read_timecourse(path, backed=True)
    assert tc.adata.isbacked
    assert not isinstance(tc.expression(), (np.ndarray, scipy.sparse.spmatrix))
    np.testing.assert_array_equal(tc.times, adata.obs["time"].to_numpy())
    rows_read = tc.expression()[2:5]
    rows_read = rows_read.toarray() if sparse else rows_read
    rows_written = adata.X[2:5].toarray() if sparse else adata.X[2:5]
    np.testing.assert_array_equal(rows_read, rows_written)
    tc.adata.file.close()


@pytest.mark.parametrize("sparse", [True, False])
def test_backed_reading_finds_bad_values_across_chunks(tmp_path, monkeypatch, sparse):
    adata = _make_adata(sparse=sparse)
    dense = np.asarray(adata.X.todense() if sparse else adata.X)
    dense[[0, 5, 11], [1, 2, 5]] = 0.5
    adata.X = scipy.sparse.csr_matrix(dense) if sparse else dense
    path = tmp_path / "data.h5ad"
    adata.write_h5ad(path)
    monkeypatch.setattr(io, "_CHUNK_VALUES", 4)
    with pytest.raises(SctraceInputError, match=r"X holds non-integer values \(3 of them\)"):
        read_timecourse(path, backed=True)


# ---------------------------------------------------------------- time column


def test_missing_time_key_lists_obs_columns():
    with pytest.raises(
        SctraceInputError, match=r"time column 'day' is not in adata.obs; pass time_key as one of .*'time', 'cell_type'"
    ):
        read_timecourse(_make_adata(), time_key="day")


def test_numeric_times_used_as_is_and_input_not_copied():
    adata = _make_adata(times=np.repeat([0.5, 2.0, 7.25], 4))
    tc = read_timecourse(adata)
    assert tc.adata is adata
    assert tc.times.dtype == np.float64
    np.testing.assert_array_equal(tc.times, np.repeat([0.5, 2.0, 7.25], 4))
    np.testing.assert_array_equal(tc.time_values, [0.5, 2.0, 7.25])


def test_string_labels_are_parsed():
    adata = _make_adata(times=np.repeat(["day0", "day2", "day10"], 4))
    tc = read_timecourse(adata)
    np.testing.assert_array_equal(tc.times, np.repeat([0.0, 2.0, 10.0], 4))


def test_categorical_labels_are_parsed():
    adata = _make_adata(times=pd.Categorical(np.repeat(["6h", "0h", "12h"], 4), categories=["0h", "6h", "12h"]))
    tc = read_timecourse(adata)
    np.testing.assert_array_equal(tc.times, np.repeat([6.0, 0.0, 12.0], 4))


def test_time_map_maps_labels():
    adata = _make_adata(times=np.repeat(["early", "mid", "late"], 4))
    tc = read_timecourse(adata, time_map={"early": 0, "mid": 1.5, "late": "4"})
    np.testing.assert_array_equal(tc.times, np.repeat([0.0, 1.5, 4.0], 4))


def test_time_map_maps_numeric_codes():
    adata = _make_adata(times=np.repeat([1, 2, 3], 4))
    tc = read_timecourse(adata, time_map={"1": 0.0, "2": 0.5, "3.0": 10.0})
    np.testing.assert_array_equal(tc.times, np.repeat([0.0, 0.5, 10.0], 4))


def test_time_map_missing_labels_named():
    adata = _make_adata(times=np.repeat(["early", "mid", "late"], 4))
    with pytest.raises(
        SctraceInputError, match=r"time_map has no value for the time labels 'mid', 'late' of obs column 'time'"
    ):
        read_timecourse(adata, time_map={"early": 0})


def test_unparsable_labels_suggest_time_map():
    adata = _make_adata(times=np.repeat(["LPS_0h", "LPS_2h", "ctrl"], 4))
    with pytest.raises(
        SctraceInputError,
        match=r"cannot read the time labels 'LPS_0h', 'LPS_2h', 'ctrl' .* time_map=\{'label': value\}\.$",
    ):
        read_timecourse(adata)


def test_mixed_units_refused():
    adata = _make_adata(times=np.repeat(["12h", "1d", "2d"], 4))
    with pytest.raises(SctraceInputError, match=r"mix units \(day, hour\) and parse_time does not convert units"):
        read_timecourse(adata)


def test_nan_times_counted():
    times = np.repeat([0.0, 1.0, 3.0], 4)
    times[[2, 7]] = np.nan
    with pytest.raises(SctraceInputError, match=r"2 of 12 cells have no finite time in obs column 'time'"):
        read_timecourse(_make_adata(times=times))


def test_missing_categorical_labels_counted():
    times = pd.Categorical(np.repeat(["d0", "d1", "d2"], 4))
    times[5] = np.nan
    with pytest.raises(SctraceInputError, match=r"1 of 12 cells have no finite time"):
        read_timecourse(_make_adata(times=times))


def test_single_time_point_refused():
    with pytest.raises(SctraceInputError, match=r"holds 1 time point\(s\) \(2\), but a time course needs at least 2"):
        read_timecourse(_make_adata(times=np.full(12, 2.0)))


def test_empty_category_named():
    times = pd.Categorical(np.repeat(["d0", "d1", "d3"], 4), categories=["d0", "d1", "d2", "d3"])
    with pytest.raises(
        SctraceInputError, match=r"time column 'time' has categories with no cells: 'd2'; .*remove_unused_categories"
    ):
        read_timecourse(_make_adata(times=times))


# ---------------------------------------------------------------- parse_time and check_holdout


@pytest.mark.parametrize(
    ("label", "expected"),
    [
        (6, 6.0),
        (6.5, 6.5),
        (np.int64(3), 3.0),
        ("6", 6.0),
        ("6.5", 6.5),
        (" -1 ", -1.0),
        ("6h", 6.0),
        ("6 hr", 6.0),
        ("48h", 48.0),
        ("2d", 2.0),
        ("2 days", 2.0),
        ("day2", 2.0),
        ("Day 2.5", 2.5),
        ("D2", 2.0),
        ("day_10", 10.0),
        ("t3", 3.0),
        ("3wk", 3.0),
        ("30min", 30.0),
    ],
)
def test_parse_time_accepted_forms(label, expected):
    assert parse_time(label) == expected


@pytest.mark.parametrize("label", ["LPS_2h", "ctrl", "", "day2h", "2x", "nan", float("nan"), float("inf"), True])
def test_parse_time_refuses(label):
    with pytest.raises(SctraceInputError, match=r"cannot parse time value .*; give a number such as 6 or 6\.5"):
        parse_time(label)


def test_check_holdout_matches_observed_value():
    tc = read_timecourse(_make_adata(times=np.repeat([0.0, 1.0 / 3.0, 3.0], 4)))
    assert check_holdout(tc, 0.3333333333) == 1.0 / 3.0
    assert check_holdout(tc, "3h") == 3.0


def test_check_holdout_lists_observed_values():
    tc = read_timecourse(_make_adata())
    message = r"held-out time 2 is not an observed time point; choose one of 0, 1, 3\.$"
    with pytest.raises(SctraceInputError, match=message):
        check_holdout(tc, 2)


# ---------------------------------------------------------------- keys, layers, genes


def test_layer_selection():
    adata = _make_adata()
    adata.X = adata.X.multiply(0.5).tocsr()  # normalised-looking X; raw counts stay in the layer
    tc = read_timecourse(adata, layer="counts")
    assert tc.layer == "counts"
    assert tc.expression() is adata.layers["counts"]
    assert read_timecourse(adata, count_kind="lognorm").expression() is adata.X


def test_missing_layer_lists_layers():
    with pytest.raises(
        SctraceInputError, match=r"layer 'raw' is not in adata.layers; pass layer as one of 'counts' or layer=None"
    ):
        read_timecourse(_make_adata(), layer="raw")


def test_empty_x_suggests_layer():
    adata = _make_adata()
    adata.X = None
    with pytest.raises(SctraceInputError, match=r"adata.X is empty; pass layer as one of 'counts'"):
        read_timecourse(adata)


def test_missing_stratify_key_lists_obs_columns():
    with pytest.raises(
        SctraceInputError, match=r"stratify column 'donor' is not in adata.obs; choose .* from 'time', 'cell_type'"
    ):
        read_timecourse(_make_adata(), stratify=["cell_type", "donor"])


def test_stratify_column_with_missing_values():
    adata = _make_adata()
    adata.obs.loc[adata.obs_names[:3], "cell_type"] = np.nan
    with pytest.raises(SctraceInputError, match=r"stratify column 'cell_type' has no value for 3 cells"):
        read_timecourse(adata, stratify="cell_type")


def test_stratify_as_single_string():
    assert read_timecourse(_make_adata(), stratify="cell_type").stratify_keys == ("cell_type",)


def test_missing_gene_key_lists_var_columns():
    with pytest.raises(
        SctraceInputError, match=r"gene column 'gene_ids' is not in adata.var; pass gene_key as one of .*'symbol'"
    ):
        read_timecourse(_make_adata(), gene_key="gene_ids")


def test_gene_names_from_var_names_or_column():
    adata = _make_adata()
    np.testing.assert_array_equal(read_timecourse(adata).gene_names(), [f"ENSG{j}" for j in range(6)])
    np.testing.assert_array_equal(read_timecourse(adata, gene_key="symbol").gene_names(), [f"G{j}" for j in range(6)])


def test_duplicated_var_names_named():
    adata = _make_adata()
    adata.var_names = ["A", "B", "A", "C", "B", "D"]
    with pytest.raises(
        SctraceInputError,
        match=r"adata.var_names has 2 duplicated gene names \(e.g. 'A', 'B'\); call adata.var_names_make_unique",
    ):
        read_timecourse(adata)


def test_duplicated_gene_column_named():
    adata = _make_adata()
    adata.var["symbol"] = ["A", "B", "C", "C", "E", "F"]
    with pytest.raises(
        SctraceInputError, match=r"adata.var\['symbol'\] has 1 duplicated gene names \(e.g. 'C'\); make .* unique"
    ):
        read_timecourse(adata, gene_key="symbol")


def test_unknown_count_kind():
    with pytest.raises(SctraceInputError, match=r"unknown count_kind 'tpm'; choose one of 'counts', 'lognorm'"):
        read_timecourse(_make_adata(), count_kind="tpm")
    assert COUNT_KINDS == ("counts", "lognorm")


# ---------------------------------------------------------------- expression values


def _with_values(adata: anndata.AnnData, cells, genes, value, *, where: str) -> anndata.AnnData:
    """Set some entries of X or a layer, keeping its storage (sparse or dense)."""
    matrix = adata.X if where == "X" else adata.layers[where]
    dense = np.asarray(matrix.todense() if scipy.sparse.issparse(matrix) else matrix, dtype=np.float32)
    dense[cells, genes] = value
    stored = scipy.sparse.csr_matrix(dense) if scipy.sparse.issparse(matrix) else dense
    if where == "X":
        adata.X = stored
    else:
        adata.layers[where] = stored
    return adata


@pytest.mark.parametrize("sparse", [True, False])
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_values_counted(sparse, value):
    adata = _with_values(_make_adata(sparse=sparse), [0, 4], [1, 3], value, where="X")
    with pytest.raises(SctraceInputError, match=r"X holds 2 NaN or infinite values; replace them"):
        read_timecourse(adata)


@pytest.mark.parametrize("sparse", [True, False])
def test_negative_values_counted_in_layer(sparse):
    adata = _with_values(_make_adata(sparse=sparse), [0, 4, 9], [1, 3, 0], -1.0, where="counts")
    with pytest.raises(SctraceInputError, match=r"layer 'counts' holds 3 negative values, but expression must be"):
        read_timecourse(adata, layer="counts")


def test_negative_integer_dtype_counted():
    adata = _make_adata(sparse=False)
    adata.X = adata.X.astype(np.int32)
    adata.X[3, 2] = -5
    with pytest.raises(SctraceInputError, match=r"X holds 1 negative values"):
        read_timecourse(adata)


@pytest.mark.parametrize("sparse", [True, False])
def test_non_integer_counts_refused_with_layers_named(sparse):
    adata = _make_adata(sparse=sparse)
    adata.X = adata.X * 0.5
    with pytest.raises(
        SctraceInputError,
        match=(
            r"X holds non-integer values \(\d+ of them\), but raw counts are required; pass layer='counts' if raw "
            r"counts are in a layer \(available layers: 'counts'\), or count_kind='lognorm'"
        ),
    ):
        read_timecourse(adata)
    assert read_timecourse(adata, count_kind="lognorm").count_kind == "lognorm"


@pytest.mark.parametrize("sparse", [True, False])
def test_chunked_counts_match_direct_count(monkeypatch, sparse):
    rng = np.random.default_rng(5)
    dense = rng.poisson(1.0, size=(30, 7)).astype(np.float64)
    cells, genes = rng.integers(0, 30, size=40), rng.integers(0, 7, size=40)
    dense[cells, genes] = -rng.random(40) - 0.1
    expected = int(np.count_nonzero(dense < 0))
    adata = _make_adata(30, 7, times=np.repeat([0.0, 1.0, 2.0], 10))
    adata.X = scipy.sparse.csr_matrix(dense) if sparse else dense
    monkeypatch.setattr(io, "_CHUNK_VALUES", 9)  # dense: one row per chunk; sparse: many data chunks
    with pytest.raises(SctraceInputError, match=rf"X holds {expected} negative values"):
        read_timecourse(adata)


def test_huge_sparse_matrix_is_not_densified():
    # Densifying this (200k x 50k float32) would need 40 GB; validation must only touch the stored values.
    n_cells, n_genes = 200_000, 50_000
    rows = np.arange(0, n_cells, 1000)
    matrix = scipy.sparse.csr_matrix(
        (np.full(rows.size, 3.0, dtype=np.float32), (rows, rows % n_genes)), shape=(n_cells, n_genes)
    )
    obs = pd.DataFrame({"time": np.arange(n_cells) % 4}, index=np.arange(n_cells).astype(str))
    adata = anndata.AnnData(X=matrix, obs=obs)
    tc = read_timecourse(adata)
    assert tc.expression() is matrix


def test_lognorm_warns_when_values_look_like_counts():
    adata = _make_adata()
    adata.X[0, 0] = 60.0
    with pytest.warns(UserWarning, match=r"X holds only integers \(max 60\), which looks like raw counts"):
        read_timecourse(adata, count_kind="lognorm")


def test_lognorm_refuses_values_no_log_normalisation_gives():
    adata = _make_adata()
    adata.X[0, 0] = 500.0
    with pytest.raises(SctraceInputError, match=r"X holds values up to 500, far above any log-normalised expression"):
        read_timecourse(adata, count_kind="lognorm")


def test_lognorm_does_not_warn_for_log_values(recwarn):
    adata = _make_adata()
    adata.X = adata.X.log1p()
    read_timecourse(adata, count_kind="lognorm")
    assert not [w for w in recwarn.list if issubclass(w.category, UserWarning)]
