"""per_cell_fidelity: decoded values paired cell by cell with the real cells they were decoded for."""

import numpy as np
import pytest
import scipy.sparse as sp

from sctrace._errors import SctraceInputError
from sctrace.harness.metrics import per_cell_fidelity


@pytest.fixture
def real():
    rng = np.random.default_rng(0)
    profile = rng.gamma(2.0, 1.0, 50)
    return np.log1p(rng.poisson(profile * rng.gamma(3.0, 1.0, (80, 1)) * rng.gamma(2.0, 0.5, (80, 50))))


def test_a_perfect_decoder_scores_one_and_a_profile_scores_no_spread(real):
    perfect = per_cell_fidelity(sp.csr_matrix(real), real)
    assert perfect == pytest.approx({"spread_ratio": 1.0, "per_gene_r": 1.0, "per_cell_r": 1.0})
    profile = per_cell_fidelity(np.tile(real.mean(0), (len(real), 1)), real)
    assert profile["spread_ratio"] == pytest.approx(0.0, abs=1e-9) and np.isnan(profile["per_gene_r"])
    half = per_cell_fidelity(real.mean(0) + 0.5 * (real - real.mean(0)), real)
    assert half["spread_ratio"] == pytest.approx(0.5) and half["per_gene_r"] == pytest.approx(1.0)


def test_values_of_other_cells_lose_the_pairing(real):
    shuffled = per_cell_fidelity(real[np.random.default_rng(1).permutation(len(real))], real)
    assert shuffled["spread_ratio"] == pytest.approx(1.0)  # the same population
    assert abs(shuffled["per_gene_r"]) < 0.2 and abs(shuffled["per_cell_r"]) < 0.2


def test_mismatched_cells_are_refused(real):
    with pytest.raises(SctraceInputError, match="same cells and genes in the same order"):
        per_cell_fidelity(real[:10], real)
    with pytest.raises(SctraceInputError, match="at least 2 cells"):
        per_cell_fidelity(real[:1], real[:1])
