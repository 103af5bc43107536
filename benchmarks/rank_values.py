"""How much of a cell's values does its sentence say? `python benchmarks/rank_values.py DATA TIME_KEY [--count-kind K]`.

Issue 24 asks for a count decoder that turns each generated sentence into that cell's values, and to check
Cell2Sentence's observation that within a cell log expression is close to linear in log rank. Our sentences
are Geneformer's: genes ranked by value / the gene's non-zero median over the training cells, not by value.
For 300 cells this prints the median over cells of the Pearson r, along each cell's sentence, between log rank
and (a) the log-normalised value, (b) log(value / median), and (c) for comparison, the cell's own values sorted
(Cell2Sentence's ranking). The corpus is built as fit would (cpu-small's data settings, every time point kept);
no model is trained. About 10 s per data set.
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    parser.add_argument("time_key")
    parser.add_argument("--count-kind", default=None, help="counts | lognorm | values (default: read from the data)")
    parser.add_argument("--n-cells", type=int, default=300)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    import anndata as ad

    from sctrace.config import load_config
    from sctrace.data.corpus import prepare_corpus, tokenize_with_spec
    from sctrace.data.io import detect_count_kind, read_timecourse
    from sctrace.data.preprocess import read_gene_choice
    from sctrace.data.tokenize import N_SPECIAL
    from sctrace.harness.evaluate import lognorm_over_genes

    adata = ad.read_h5ad(args.data)
    kind = args.count_kind or detect_count_kind(adata.X)
    if kind == "values":  # FPKM/TPM-like: log1p, as the protocol hands them to every method
        adata.X = np.log1p(adata.X)
        kind = "lognorm"
    config = load_config()
    course = read_timecourse(adata, args.time_key, count_kind=kind)
    data = config.data
    spec = prepare_corpus(course, task="none", n_top_genes=data.n_top_genes, genes=read_gene_choice(data.genes),
                          max_len=data.max_len, seed=0).spec
    genes = list(spec.genes)
    columns = adata.var_names.get_indexer(genes)
    raw = adata.X[:, columns]
    values = np.asarray(lognorm_over_genes(adata.X, adata.var_names, genes, kind).todense())
    tokens, _ = tokenize_with_spec(spec, raw, genes)
    rank_input = raw.toarray() if hasattr(raw, "toarray") else np.asarray(raw)
    rank_input = np.expm1(rank_input) if kind == "lognorm" else rank_input
    medians = np.asarray(spec.gene_medians)
    by_value, by_ratio, own = [], [], []
    rng = np.random.default_rng(0)
    for i in rng.choice(len(values), size=min(args.n_cells, len(values)), replace=False):
        sentence = tokens[i][tokens[i] >= N_SPECIAL] - N_SPECIAL
        if len(sentence) < 8:
            continue
        log_rank = np.log(np.arange(1, len(sentence) + 1))
        by_value.append(np.corrcoef(log_rank, values[i, sentence])[0, 1])
        by_ratio.append(np.corrcoef(log_rank, np.log(rank_input[i, sentence] / medians[sentence]))[0, 1])
        top = np.sort(values[i][values[i] > 0])[::-1][: len(sentence)]
        own.append(np.corrcoef(np.log(np.arange(1, len(top) + 1)), top)[0, 1])
    expressed = np.median((values > 0).sum(1))
    print(f"{args.data}: {spec.n_genes} genes, sentences of {spec.max_len}, {expressed:.0f} genes expressed per cell "
          f"(median); r with log rank along the sentence: log-normalised value {np.nanmedian(by_value):.3f}, "
          f"log(value / median) {np.nanmedian(by_ratio):.3f}; the cell's own sorted values {np.nanmedian(own):.3f}")


if __name__ == "__main__":
    main()
