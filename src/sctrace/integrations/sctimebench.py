"""sctrace as a method of scTimeBench (``pip install 'sctrace[sctimebench]'``), the public time-course benchmark.

scTimeBench runs a method as a script: ``bash SCRIPT method_config.yaml``, where the script runs
``python -m sctrace.integrations.sctimebench --yaml_config "$1"``. scTimeBench's runner then builds
:class:`SctraceMethod` from that YAML, calls ``train`` with the training AnnData (time in
``obs['scTimeBench_timepoint']``) and ``generate_next_tp_gex`` with the test AnnData, and saves the array it returns.
TRACE settings come from the method's ``metadata`` in scTimeBench's config (docs/guide.md, "Running sctrace in
scTimeBench").
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import anndata as ad
import numpy as np
import pandas as pd

from sctrace._errors import SctraceInputError
from sctrace.config import DEFAULT_PRESET
from sctrace.data.arrays import dense
from sctrace.data.io import detect_count_kind

if TYPE_CHECKING:
    from sctrace.estimator import TRACE

try:
    from scTimeBench.method_utils.method_runner import BaseMethod, main
    from scTimeBench.shared.constants import ObservationColumns
except ImportError as err:  # the adapter is an optional extra: say how to get it, in one sentence
    raise ImportError(
        f"sctrace.integrations.sctimebench needs scTimeBench, which could not be imported ({err}); "
        "install it with `pip install 'sctrace[sctimebench]'`."
    ) from err

__all__ = ["RUN_DIR", "SctraceMethod"]

TIME_KEY = ObservationColumns.TIMEPOINT.value
# The fitted run, inside the output folder scTimeBench gives this method and dataset: a rerun loads it.
RUN_DIR = "sctrace_run"
# Metadata keys that are not TraceConfig keys; every other key is a config override (max_epochs, d_model, ...).
OWN_KEYS = ("seed", "preset", "config", "max_steps")


class SctraceMethod(BaseMethod):
    """TRACE trained on scTimeBench's training time points, asked for each test cell's next test time point.

    ``genes`` defaults to ``all`` (every gene expressed in a training cell): scTimeBench scores every gene of its
    data, and a gene sctrace does not model is predicted as 0.
    """

    def __init__(self, yaml_config: dict[str, Any]):
        super().__init__(yaml_config)
        metadata = dict((yaml_config.get("method") or {}).get("metadata") or {})
        self.seed = int(metadata.get("seed", 0))
        self.preset = str(metadata.get("preset", DEFAULT_PRESET))
        self.config_file = metadata.get("config")
        self.max_steps = metadata.get("max_steps")
        self.overrides = {"genes": "all", **{k: v for k, v in metadata.items() if k not in OWN_KEYS}}
        self.model: TRACE | None = None

    def train(self, ann_data: ad.AnnData, all_tps: list | None = None) -> None:
        """Fit TRACE on every training time point (task ``none``), or load the run a previous call saved.

        ``all_tps`` (scTimeBench's training and test times): where one lies past the last training time, the fit
        calibrates how far past it the prediction moves, as an extrapolation task does (:mod:`sctrace.calibrate`).
        """
        from sctrace.estimator import TRACE
        from sctrace.rundir import WEIGHTS_FILE

        run_dir = Path(self.output_path) / RUN_DIR
        if (run_dir / WEIGHTS_FILE).exists():
            self.model = TRACE.load(run_dir)
            return
        kind = detect_count_kind(ann_data.X)
        if kind == "values":
            raise SctraceInputError(
                "scTimeBench's X holds neither raw counts nor log-normalised values (e.g. FPKM or TPM); add "
                "LogNormPreprocessor to the dataset's data_preprocessing_steps."
            )
        # The likelihood follows the kind (auto: zinb for counts, the hurdle for log-normalised values).
        model = TRACE(ann_data, TIME_KEY, task="none", count_kind=kind, preset=self.preset, config=self.config_file,
                      seed=self.seed, **self.overrides)
        last = float(ann_data.obs[TIME_KEY].astype(float).max())
        beyond = any(float(t) > last for t in (all_tps or ()))
        self.model = model.fit(run_dir=run_dir, overwrite=True, progress=False, max_steps=self.max_steps,
                               calibrate_extrapolation=beyond)

    def generate_next_tp_gex(self, test_ann_data: ad.AnnData) -> np.ndarray:
        """(test cells, test genes): each cell's expression at the next test time point; NaN rows at the last.

        Cells at TRACE's source time (the first training time) are generated from themselves (``source=``), so
        each row follows its cell; cells at other times get cells drawn from the training source cells, since
        TRACE reads a source cell only at its source time. Values are of the kind trained on (counts or log-norm).
        """
        if self.model is None:
            raise SctraceInputError("SctraceMethod.generate_next_tp_gex needs train() first.")
        times = test_ann_data.obs[TIME_KEY].to_numpy(dtype=float)
        steps = np.unique(times)
        genes = pd.Index(self.model.spec.genes)
        columns = genes.get_indexer(test_ann_data.var_names.astype(str))
        known = columns >= 0
        out = np.full(test_ann_data.shape, np.nan, dtype=np.float32)
        for k, (time, next_time) in enumerate(zip(steps[:-1], steps[1:])):
            rows = np.flatnonzero(times == time)
            if np.isclose(time, self.model.spec.source_time):
                cells = self.model.predict(float(next_time), source=test_ann_data[rows], seed=self.seed + k)
            else:
                cells = self.model.predict(float(next_time), n_cells=len(rows), seed=self.seed + k)
            values = dense(cells.X)
            block = np.zeros((len(rows), test_ann_data.n_vars), dtype=np.float32)
            block[:, known] = values[:, columns[known]]
            out[rows] = block
        return out


if __name__ == "__main__":
    main(SctraceMethod)
