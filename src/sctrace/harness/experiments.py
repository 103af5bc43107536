"""The paper's two appendix experiments: imputation of held-out cells (B.3) and extrapolation by distance (B.4).

Imputation (``sctrace impute``)
    The cells of every time point are split 80/20 (seeded; within each time x cell type group where cell types
    are known). TRACE is trained on the 80% of every time point (task ``none``). For every time point after the
    first, cells are generated starting from the held-out cells of the first time point (the source, which is
    not imputed itself: the paper's Figure 8 shows "all activated time points", i.e. every one but the
    resting source) and scored against the held-out cells of that time point. The floor ``identity`` is the
    training cells of that same time point: real cells the model saw, so beating it is hard.

Extrapolation by distance (``sctrace extrapolation``)
    TRACE is trained on the first ``k`` observed time points only; each later time point is predicted on its
    own and scored against all its real cells, and the metrics are reported against the number of observed
    steps past the last training time (1, 2, ...) and the real time difference. The floor ``identity`` is the
    cells of the last training time point.

Both score as :mod:`sctrace.harness.benchmark` does: every method produces as many cells as the scored real set has
(the biased MMD carries a ``1/n`` term per set, so the sizes must match), over the HVGs chosen on the training
cells (which are sctrace's own, checked), with :func:`sctrace.harness.metrics.score` on log-normalised expression;
ROUGE-1 for sctrace against the real cells tokenized with the run's gene medians. sctrace reads only
``OUT/work/train.h5ad``, which holds the training cells alone; the floors and OT-CFM get only training rows.
"""

from __future__ import annotations

from sctrace.harness.extrapolation import extrapolation_markdown, run_extrapolation_distance
from sctrace.harness.imputation import IMPUTATION_METHODS, imputation_markdown, run_imputation, split_cells

__all__ = [
    "IMPUTATION_METHODS",
    "extrapolation_markdown",
    "imputation_markdown",
    "run_extrapolation_distance",
    "run_imputation",
    "split_cells",
]
