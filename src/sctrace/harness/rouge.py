"""Sentence metrics: ROUGE-1 and ROUGE-L between the gene-token sentences of generated cells and of their real cells."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from sctrace._errors import SctraceInputError
from sctrace.data.pca import BLOCK_ELEMENTS
from sctrace.data.tokenize import N_SPECIAL


def _gene_token_matrix(sequences, name: str, padding: int) -> np.ndarray:
    """(n_sequences, max_len) int64 matrix of the gene tokens in order, special tokens and padding = ``padding``.

    Accepts a 2-D integer array (padded with [PAD]=0) or a sequence of integer sequences of any lengths.
    """
    if getattr(sequences, "ndim", None) == 2:
        tokens = np.array(sequences)
    else:
        rows = [np.asarray(row).ravel() for row in sequences]
        if any(row.size and not np.issubdtype(row.dtype, np.integer) for row in rows):
            raise SctraceInputError(f"{name} must hold integer token ids; pass token sequences, not expression.")
        tokens = np.zeros((len(rows), max((row.size for row in rows), default=0)), dtype=np.int64)
        for i, row in enumerate(rows):
            tokens[i, : row.size] = row
    if tokens.shape[0] == 0:
        raise SctraceInputError(f"{name} is empty; pass at least one token sequence.")
    if not np.issubdtype(tokens.dtype, np.integer):
        raise SctraceInputError(f"{name} must hold integer token ids; pass token sequences, not expression.")
    tokens = tokens.astype(np.int64)
    tokens[tokens < N_SPECIAL] = padding
    return tokens


def _paired_tokens(generated, reference) -> tuple[np.ndarray, np.ndarray]:
    """Token matrices of both sides; their paddings differ so padding never matches padding."""
    generated_tokens = _gene_token_matrix(generated, "generated", padding=-1)
    reference_tokens = _gene_token_matrix(reference, "reference", padding=-2)
    if generated_tokens.shape[0] != reference_tokens.shape[0]:
        raise SctraceInputError(
            f"generated has {generated_tokens.shape[0]} sequences but reference has {reference_tokens.shape[0]}; "
            "ROUGE compares paired cells, so pass one reference sequence per generated sequence."
        )
    return generated_tokens, reference_tokens


def _precision_recall_f1(overlap: np.ndarray, generated_size: np.ndarray, reference_size: np.ndarray,
                         prefix: str) -> dict[str, float]:
    """Average per-pair precision, recall and F1; an empty side gives 0 rather than a division by zero."""
    precision = np.divide(overlap, generated_size, out=np.zeros(len(overlap)), where=generated_size > 0)
    recall = np.divide(overlap, reference_size, out=np.zeros(len(overlap)), where=reference_size > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(len(overlap)),
                   where=precision + recall > 0)
    return {f"{prefix}_precision": float(precision.mean()), f"{prefix}_recall": float(recall.mean()),
            f"{prefix}_f1": float(f1.mean())}


def _distinct(values: np.ndarray) -> np.ndarray:
    """Sorted distinct values; by sorting, as numpy 2.4's hash-based ``np.unique`` is ~50x slower on int64."""
    values = np.sort(values)
    return values[np.r_[True, values[1:] != values[:-1]][: values.size]]


def rouge1(generated: Sequence[Sequence[int]] | np.ndarray,
           reference: Sequence[Sequence[int]] | np.ndarray) -> dict[str, float]:
    """ROUGE-1 between paired gene-token sequences, on token sets.

    A gene appears at most once in a cell's sequence, so unigram overlap is set intersection:
    ``precision = |G & R| / |G|``, ``recall = |G & R| / |R|``, ``f1 = 2 P R / (P + R)``, computed per pair and
    averaged over pairs. Ids below 3 ([PAD]=0, [MASK]=1, [CLS]=2) are ignored. A pair side with no gene token
    scores 0.

    Parameters
    ----------
    generated
        (n_pairs, len) int array padded with 0, or n_pairs integer sequences of any lengths.
    reference
        The same for the real cells, paired row by row with ``generated``.

    Returns
    -------
    dict
        ``rouge1_precision``, ``rouge1_recall``, ``rouge1_f1``.
    """
    generated_tokens, reference_tokens = _paired_tokens(generated, reference)
    n_pairs = generated_tokens.shape[0]
    stride = int(max(generated_tokens.max(), reference_tokens.max(), N_SPECIAL)) + 1
    keys = []
    for tokens in (generated_tokens, reference_tokens):
        rows, cols = np.nonzero(tokens >= N_SPECIAL)
        keys.append(_distinct(rows * stride + tokens[rows, cols]))
    shared = np.intersect1d(keys[0], keys[1], assume_unique=True)
    return _precision_recall_f1(np.bincount(shared // stride, minlength=n_pairs),
                                np.bincount(keys[0] // stride, minlength=n_pairs),
                                np.bincount(keys[1] // stride, minlength=n_pairs), "rouge1")


def _lcs_lengths(generated_tokens: np.ndarray, reference_tokens: np.ndarray) -> np.ndarray:
    """(n_pairs,) longest-common-subsequence lengths, one DP row per generated position for all pairs at once.

    Row update: ``lcs[j] = max_{k <= j} (lcs_prev[k-1] + 1 if match at k else lcs_prev[k])``; the running max
    replaces the left-neighbour term of the textbook recurrence, so each row is a few vector operations.
    """
    n_pairs, reference_len = reference_tokens.shape
    previous = np.zeros((n_pairs, reference_len + 1), dtype=np.int32)
    for position in range(generated_tokens.shape[1]):
        match = generated_tokens[:, position, None] == reference_tokens
        candidate = np.where(match, previous[:, :-1] + 1, previous[:, 1:])
        previous[:, 1:] = np.maximum.accumulate(candidate, axis=1)
    return previous[:, -1]


def _left_align(tokens: np.ndarray, padding: int) -> np.ndarray:
    """Move each row's gene tokens to the front in their order, padding the rest, and trim all-padding columns."""
    is_gene = tokens >= N_SPECIAL
    lengths = is_gene.sum(1)
    aligned = np.full((tokens.shape[0], int(lengths.max(initial=0))), padding, dtype=np.int64)
    aligned[np.arange(aligned.shape[1])[None, :] < lengths[:, None]] = tokens[is_gene]
    return aligned


def rouge_l(generated: Sequence[Sequence[int]] | np.ndarray,
            reference: Sequence[Sequence[int]] | np.ndarray) -> dict[str, float]:
    """ROUGE-L between paired gene-token sequences: longest common subsequence of the ordered tokens.

    Per pair ``precision = LCS / |G|``, ``recall = LCS / |R|``, ``f1 = 2 P R / (P + R)`` with |.| the number of
    gene tokens, averaged over pairs. Rank order matters here, unlike in :func:`rouge1`. Ids below 3 are
    ignored; a pair side with no gene token scores 0.

    Parameters
    ----------
    generated
        (n_pairs, len) int array padded with 0, or n_pairs integer sequences of any lengths.
    reference
        The same for the real cells, paired row by row with ``generated``.

    Returns
    -------
    dict
        ``rougeL_precision``, ``rougeL_recall``, ``rougeL_f1``.
    """
    generated_tokens, reference_tokens = _paired_tokens(generated, reference)
    # Drop special tokens so that the DP runs only over gene tokens, keeping their order.
    generated_tokens = _left_align(generated_tokens, padding=-1)
    reference_tokens = _left_align(reference_tokens, padding=-2)
    # Pairs are processed in batches to bound the (batch, reference_len) work arrays.
    step = max(1, BLOCK_ELEMENTS // 8 // max(reference_tokens.shape[1], 1))
    lcs = np.concatenate([_lcs_lengths(generated_tokens[start:start + step], reference_tokens[start:start + step])
                          for start in range(0, generated_tokens.shape[0], step)])
    return _precision_recall_f1(lcs, (generated_tokens >= N_SPECIAL).sum(1),
                                (reference_tokens >= N_SPECIAL).sum(1), "rougeL")
