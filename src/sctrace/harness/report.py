"""Readable text summaries and result tables."""

from __future__ import annotations

import math

import numpy as np

from sctrace.data.corpus_types import Corpus
from sctrace.data.timecourse import TimeCourse


def corpus_summary(timecourse: TimeCourse, corpus: Corpus, pairing: str = "random") -> str:
    """Cells per time point, genes, sequence lengths, pairs and strata, as a short text block."""
    spec = corpus.spec
    lines = [f"cells: {timecourse.adata.n_obs}  genes in data: {timecourse.adata.n_vars}  time key: {spec.time_key}"]
    lines.append(f"task: {spec.task}  held-out time: {spec.holdout if spec.holdout is not None else '-'}")
    lines.append("time      cells  role      mean tokens")
    for value in timecourse.time_values:
        n = int(np.isclose(timecourse.times, value).sum())
        if spec.holdout is not None and math.isclose(value, spec.holdout):
            role, mean_len = "held out", "-"
        elif any(math.isclose(value, t) for t in spec.time_values):
            role = "source" if math.isclose(value, spec.source_time) else "target"
            mean_len = f"{spec.mean_lengths[spec.time_values.index(value)]:.1f}"
        else:
            role, mean_len = "unused", "-"
        lines.append(f"{value:<9g} {n:>5}  {role:<9} {mean_len:>11}")
    lines.append(f"HVGs: {spec.n_genes} (chosen on training cells only)  vocabulary: {spec.vocab_size} tokens")
    lines.append(f"max tokens per cell: {spec.max_len}  mean tokens per training cell: {corpus.lengths.mean():.1f}")
    held = "" if not spec.validation_rows else f"; the last {spec.validation_rows} pair validation cells held aside"
    lines.append(f"pairs: {len(corpus.pairs)} ({len(np.unique(corpus.pairs[:, 0]))} source cells x {len(spec.time_values)} times{held})")
    if spec.stratify:
        strata = timecourse.adata.obs[spec.stratify].astype(str).agg("/".join, axis=1)
        lines.append(f"strata ({', '.join(spec.stratify)}): {strata.nunique()} -> {', '.join(sorted(strata.unique())[:10])}")
    else:
        lines.append(f"pairing: {pairing}")
    return "\n".join(lines)


def markdown_table(rows: dict[str, dict[str, float]], columns: list[str]) -> str:
    """rows: method -> metric -> value. Lower-is-better columns are not marked; the caller's legend says."""
    header = "| method | " + " | ".join(columns) + " |"
    rule = "|---|" + "---|" * len(columns)
    body = [
        f"| {name} | " + " | ".join(_fmt(values.get(c)) for c in columns) + " |" for name, values in rows.items()
    ]
    return "\n".join([header, rule, *body])


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, str):
        return value
    return f"{value:.4f}"
