"""MaskGIT decoding of gene sentences at a real time value, then counts from the count decoder."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from sctrace._errors import SctraceInputError, option_name
from sctrace.config import LOGNORM_LIKELIHOODS, TraceConfig
from sctrace.data.corpus import Corpus, CorpusSpec
from sctrace.model.masking import mask_ratio
from sctrace.model.module import CLS_ID, MASK_ID, N_SPECIAL, PAD_ID, TraceNet, gather_sentences
from sctrace.model.sampling import GeneCopula, StratifiedLevels, reorder_levels


def _gumbel(shape: torch.Size, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    uniform = torch.rand(shape, generator=generator, device=device).clamp_(1e-10, 1 - 1e-10)
    return -torch.log(-torch.log(uniform))


def _sample_categorical(
    logits: torch.Tensor, generator: torch.Generator | None, block: int = 64
) -> tuple[torch.Tensor, torch.Tensor]:
    """One draw per row from ``softmax(logits)`` and its log-probability, by inverse-CDF sampling.

    logits: (n, vocab) float, ``-inf`` where a token is forbidden (every row keeps at least one finite entry);
    it is overwritten, since at generation size a copy costs as much as the arithmetic.
    Returns (n,) int64 tokens and (n,) float log-probabilities. One uniform per row: the Gumbel-max trick
    draws ``vocab`` of them and takes two logarithms of each, which was most of the generation time on CPU.
    The CDF is searched in two levels, ``block``-token totals and then one block, because a cumulative sum
    along the whole vocabulary runs element by element and was the largest cost left.
    """
    weights = logits.sub_(logits.amax(dim=1, keepdim=True)).exp_()
    n, vocab = weights.shape
    n_whole = vocab - vocab % block
    totals = weights[:, :n_whole].view(n, -1, block).sum(-1)
    if n_whole < vocab:
        totals = torch.cat([totals, weights[:, n_whole:].sum(1, keepdim=True)], dim=1)
    cdf = totals.cumsum(dim=1)
    total = cdf[:, -1:]
    uniform = torch.rand(total.shape, generator=generator, device=logits.device, dtype=cdf.dtype)
    # Strictly below the total, so the first block whose cdf exceeds it exists and has non-zero weight.
    threshold = torch.minimum(uniform * total, torch.nextafter(total, torch.zeros_like(total)))
    chosen = torch.searchsorted(cdf, threshold, right=True)  # (n, 1)
    before = torch.where(chosen > 0, cdf.gather(1, (chosen - 1).clamp(min=0)), torch.zeros_like(threshold))
    columns = chosen * block + torch.arange(block, device=logits.device)  # (n, block), past vocab in the last block
    block_weights = weights.gather(1, columns.clamp(max=vocab - 1)) * (columns < vocab)
    offset = torch.searchsorted(block_weights.cumsum(dim=1), threshold - before, right=True)
    # Rounding can leave the remainder at or past the block's own sum: its last token with weight takes it then.
    last = block - 1 - (block_weights > 0).flip(1).to(torch.int64).argmax(1, keepdim=True)
    tokens = chosen * block + torch.minimum(offset, last)
    log_prob = torch.log(weights.gather(1, tokens) / total)
    return tokens.squeeze(1), log_prob.squeeze(1)


def _first_claim(genes: torch.Tensor, confidence: torch.Tensor, candidate: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Among candidate positions of a row that drew the same gene, keep only the most confident one.

    genes, confidence, candidate: (batch, length). Returns a (batch, length) bool mask of winners, so two
    positions never take the same gene in one step (ties go to the lower position). Vectorised with
    scatter_reduce over a (batch, vocab) table instead of a loop over positions.
    """
    batch, length = genes.shape
    neg_inf = torch.finfo(confidence.dtype).min
    conf = torch.where(candidate, confidence, torch.full_like(confidence, neg_inf))
    best = torch.full((batch, vocab_size), neg_inf, dtype=conf.dtype, device=conf.device)
    best.scatter_reduce_(1, genes, conf, reduce="amax")
    is_best = candidate & (conf == best.gather(1, genes))
    position = torch.arange(length, device=genes.device).expand(batch, length)
    first = torch.full((batch, vocab_size), length, dtype=torch.long, device=genes.device)
    first.scatter_reduce_(1, genes, torch.where(is_best, position, torch.full_like(position, length)), reduce="amin")
    return is_best & (first.gather(1, genes) == position)


def _redraw_duplicates(
    sampled: torch.Tensor,
    winners: torch.Tensor,
    completing: torch.Tensor,
    weights: torch.Tensor,
    masked: torch.Tensor,
    confidence: torch.Tensor,
    vocab_size: int,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Give every position of the rows being completed a gene of its own, from this step's distribution.

    A position that lost an in-step duplicate at a row's last step would otherwise cost one more decoder
    forward; here it draws again from the distribution this step already computed, with every gene its row
    holds forbidden, until no duplicate is left. The loop touches only the losers (a few per batch).

    sampled, winners, completing, masked, confidence: (batch, length); ``weights``: (masked positions, vocab),
    the unnormalised probabilities :func:`_sample_categorical` left in place of the logits, in the row-major
    order of ``masked``. Returns the updated ``sampled`` and ``winners``: every ``completing`` position wins.
    """
    flat_index = torch.zeros_like(sampled).masked_scatter_(masked, torch.arange(weights.shape[0], device=sampled.device))
    pending = completing & ~winners
    while bool(pending.any()):
        held = torch.where(pending, torch.full_like(sampled, MASK_ID), sampled)
        logits = weights[flat_index[pending]].log()
        logits.scatter_(1, held[pending.nonzero()[:, 0]], float("-inf"))
        draws, _ = _sample_categorical(logits, generator)
        candidate = held.masked_scatter(pending, draws)
        # Held genes were forbidden above, so only duplicates among the redrawn positions remain.
        new_winners = _first_claim(candidate, confidence, pending, vocab_size)
        sampled = torch.where(new_winners, candidate, sampled)
        winners = winners | new_winners
        pending = pending & ~new_winners
    return sampled, winners


@torch.no_grad()
def maskgit_generate(
    net: TraceNet,
    source: torch.Tensor,
    source_time: float,
    context: Sequence[tuple[torch.Tensor, float]],
    target_time: float,
    lengths: torch.Tensor,
    *,
    n_iter: int = 20,
    temperature: float = 1.0,
    schedule: str = "cosine",
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generate gene sentences for ``target_time`` from source cells and observed-time context.

    Parameters
    ----------
    source
        (batch, length) int64 source sentences with [CLS] first.
    context
        ``(sentences (batch, length) with [CLS], time)`` for each context time point, in time order.
    lengths
        (batch,) int64 number of gene tokens to generate per cell (<= net.max_len and <= genes).
    n_iter
        R, the number of MaskGIT iterations; the schedule fixes how many positions stay masked after each.
    temperature
        Sampling temperature (> 0). The random part of the confidence used to choose which positions to
        keep is scaled by ``temperature * (1 - (r + 1) / R)``, so it fades to zero without any division.

    Returns
    -------
    tokens
        (batch, max(lengths) + 1) int64 with [CLS] first, PAD after each cell's length; genes never repeat.
    hidden
        (batch, max(lengths) + 1, d) final decoder states of the complete sentences: ``[:, 0]`` is the [CLS]
        state (the cell embedding), ``net.count_state(hidden, tokens)`` the count decoder's input.
    """
    if temperature <= 0:
        raise ValueError("temperature must be > 0")
    device = source.device
    batch = source.shape[0]
    z0, z0_pad = net.encode(source, source_time)
    memory, memory_pad = net.build_context(z0, z0_pad, context)  # once per batch, not per iteration
    memory_kv = net.decoder.project_memory(memory)  # likewise its cross-attention keys and values

    width = int(lengths.max()) + 1
    position = torch.arange(width, device=device).expand(batch, width)
    in_sentence = (position >= 1) & (position <= lengths[:, None])
    tokens = torch.full((batch, width), PAD_ID, dtype=torch.long, device=device)
    tokens[:, 0] = CLS_ID
    tokens[in_sentence] = MASK_ID
    masked = in_sentence.clone()

    step = 0
    while bool(masked.any()):
        hidden = net.decode(tokens, target_time, memory, memory_pad, memory_kv)
        # Logits and draws only at masked positions (row-major, as boolean indexing orders them): the others
        # are never candidates, and (positions x vocab) work is most of what a step costs beyond the decoder.
        logits = net.token_head(hidden[masked]).float()
        # Forbid every gene already placed in the sentence, and the special tokens: PAD, CLS and MASK fill the
        # cell's other positions, so scattering its tokens covers both in (positions x length) writes.
        logits.scatter_(1, tokens[masked.nonzero()[:, 0]], float("-inf"))
        logits[:, :N_SPECIAL] = float("-inf")
        draws, log_probs = _sample_categorical(logits.div_(temperature), generator)
        sampled = tokens.masked_scatter(masked, draws)
        confidence = torch.zeros(batch, width, dtype=log_probs.dtype, device=device).masked_scatter_(masked, log_probs)

        if step < n_iter:
            ratio = mask_ratio(torch.tensor((step + 1) / n_iter), schedule).item()
            noise_scale = temperature * (1.0 - (step + 1) / n_iter)
        else:  # not reached when the last scheduled step completes every row (see _redraw_duplicates)
            ratio, noise_scale = 0.0, 0.0
        confidence = confidence + noise_scale * _gumbel(confidence.shape, generator, device)
        winners = _first_claim(sampled, confidence, masked, net.vocab_size)

        n_masked = masked.sum(1)
        keep_masked = torch.floor(lengths.float() * ratio).long()
        keep_masked = torch.minimum(keep_masked, (n_masked - 1).clamp(min=0))
        completes = keep_masked == 0
        if bool(completes.any()):
            sampled, winners = _redraw_duplicates(
                sampled, winners, masked & completes[:, None], logits, masked, confidence, net.vocab_size, generator
            )
        n_reveal = n_masked - keep_masked
        score = torch.where(winners, confidence, torch.full_like(confidence, float("-inf")))
        order = score.argsort(dim=1, descending=True)
        rank = order.argsort(dim=1)
        reveal = winners & (rank < n_reveal[:, None])
        tokens = torch.where(reveal, sampled, tokens)
        masked &= ~reveal
        step += 1

    hidden = net.decode(tokens, target_time, memory, memory_pad, memory_kv)
    return tokens, hidden


def generate_cells(
    net: TraceNet,
    corpus,
    rows: np.ndarray,
    starts: tuple[np.ndarray, np.ndarray] | None,
    context_columns: Sequence[int],
    time: float,
    length: int,
    library: np.ndarray,
    strata,
    generator: torch.Generator,
    *,
    n_iter: int,
    temperature: float,
    schedule: str,
    batch_size: int = 128,
) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """Generate one cell per pair row of ``corpus`` in ``rows``: sentences by MaskGIT, then values by the count decoder.

    Each cell starts from its row's source cell (or ``starts``: (tokens, lengths) of user source cells, one per
    row, in order) with the row's cells at ``context_columns`` as context. ``library``: each cell's depth;
    ``strata``: a :class:`sctrace.model.sampling.StratifiedLevels` for stratified/copula draws, or None for iid.
    Returns per batch: tokens (int32, [CLS] first), [CLS] states, expected values and sampled values.
    Batches are drawn in order from one ``generator``, so a seed gives the same cells whatever calls this.
    """
    spec = corpus.spec
    net.eval()
    tokens_out, cls_out, mean_out, sample_out = [], [], [], []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        cells = corpus.pairs[chunk]
        if starts is None:
            start_cells = gather_sentences(corpus.tokens, corpus.lengths, cells[:, 0])
        else:
            start_cells = gather_sentences(starts[0], starts[1], slice(start, start + len(chunk)))
        context = [(gather_sentences(corpus.tokens, corpus.lengths, cells[:, k]), spec.time_values[k]) for k in context_columns]
        lengths = torch.full((len(chunk),), length, dtype=torch.long)
        tokens, hidden = maskgit_generate(
            net, start_cells, spec.source_time, context, time, lengths,
            n_iter=n_iter, temperature=temperature, schedule=schedule, generator=generator,
        )
        with torch.no_grad():
            state = net.count_state(hidden, tokens)
            params = net.count_params(state, torch.as_tensor(library[start : start + len(chunk)], dtype=torch.float32),
                                      tokens=tokens)
            mean_out.append(net.count_decoder.mean(params).numpy())
            levels = None if strata is None else torch.as_tensor(strata.rows(start, start + len(chunk)))
            sample_out.append(net.count_decoder.sample(params, generator=generator, uniforms=levels).numpy())
        tokens_out.append(tokens.numpy().astype(np.int32))
        cls_out.append(hidden[:, 0].numpy())
    return tokens_out, cls_out, mean_out, sample_out


def predict_cells(
    net: TraceNet,
    corpus: Corpus,
    config: TraceConfig,
    copula: GeneCopula | None,
    time: float,
    n_cells: int | None,
    *,
    seed: int,
    length: int | None,
    temperature: float | None,
    n_iter: int | None,
    batch_size: int,
    starts: tuple[np.ndarray, np.ndarray] | None,
    source_names: np.ndarray | None,
    depths: np.ndarray | None,
    sampling: str,
) -> ad.AnnData:
    """``TRACE.predict`` once its arguments are checked: draw the pairs, depths and levels, generate, wrap as AnnData.

    ``starts`` and ``source_names``: the tokenized user source cells and their names (None: the training source
    cells); ``depths``: the caller's :func:`library_values` (None: the neighbouring observed times'); ``sampling``
    a valid choice, ``copula`` present when it is ``copula``. Options left None take the config's values.
    """
    spec = corpus.spec
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    n_cells = n_cells or len(np.unique(corpus.pairs[:, 0]))
    rows = rng.choice(len(corpus.pairs), size=n_cells, replace=n_cells > len(corpus.pairs))
    length = length or spec.default_length(time)
    length = int(min(length, spec.max_len, spec.n_genes))
    if depths is None:  # the neighbouring observed times' depths
        library = spec.sample_library_sizes(time, n_cells, rng)
    else:
        library = np.full(n_cells, depths[0]) if depths.size == 1 else rng.choice(depths, size=n_cells)
    temperature = temperature or config.generation.temperature
    n_iter = n_iter or config.generation.n_iter
    context_columns = [k for k, t in enumerate(spec.time_values) if k > 0 and not np.isclose(t, time)]
    # Drawn after the rows and depths, so iid runs keep the random streams they had before this option.
    strata = None
    if sampling == "stratified":
        strata = StratifiedLevels(n_cells, spec.n_genes, rng)
    elif sampling == "copula":
        assert copula is not None  # TRACE.predict refuses copula sampling without one
        fitted = copula
        strata = StratifiedLevels(n_cells, spec.n_genes, rng,
                                  transform=lambda levels, r: reorder_levels(levels, fitted.normals(time, len(levels), r)))

    tokens_out, cls_out, mean_out, sample_out = generate_cells(
        net, corpus, rows, starts, context_columns, time, length, library, strata, generator,
        n_iter=n_iter, temperature=temperature, schedule=config.training.mask_schedule, batch_size=batch_size,
    )

    if source_names is None:
        source_names = corpus.obs_names[corpus.pairs[rows, 0]]
    obs = pd.DataFrame(
        {"time": np.full(n_cells, time), "source_cell": source_names, "library_size": library},
        index=[f"sctrace_{i}" for i in range(n_cells)],
    )
    out = ad.AnnData(sp.csr_matrix(np.concatenate(sample_out).astype(np.float32)), obs=obs, var=pd.DataFrame(index=spec.genes))
    out.layers[f"{config.counts.likelihood}_mean"] = np.concatenate(mean_out).astype(np.float32)
    out.obsm["X_sctrace"] = np.concatenate(cls_out)
    out.obsm["sctrace_tokens"] = np.concatenate(tokens_out)
    out.uns["sctrace"] = {
        "time": time, "length": length, "temperature": temperature, "n_iter": n_iter, "seed": seed,
        "likelihood": config.counts.likelihood, "count_kind": spec.count_kind, "sampling": sampling,
        "genes": config.data.genes,  # which genes were modelled: hvg, all, or the gene file given at fit
    }
    return out


def warn_if_far(spec: CorpusSpec, time: float) -> None:
    """Say when the model is asked where it never saw data: before the source time, or far past the last.

    Generation runs forward from the source cells, so any time before them has no meaning; past the last
    observed time by more than the observed span, the prediction is extrapolated further than the data reach.
    The warning points at the caller of ``TRACE.predict``, which calls this.
    """
    observed = list(spec.time_values) + ([] if spec.holdout is None else [spec.holdout])
    first, last = min(observed), max(observed)
    span = last - first
    if time < first or time > last + span:
        where = (f"before the first (source) time {first:g}" if time < first
                 else f"past the last by more than their span of {span:g}")
        warnings.warn(
            f"time {time:g} is far outside the observed times {first:g} to {last:g} ({where}); the generated "
            "cells are an extrapolation with no data near it.",
            UserWarning, stacklevel=3,
        )


def library_values(library_size, likelihood: str) -> np.ndarray:
    """The caller's depths to generate at, checked: one or more positive totals, and a count likelihood."""
    if likelihood in LOGNORM_LIKELIHOODS:
        raise SctraceInputError(
            f"library_size applies to count likelihoods; this model ({likelihood}) generates "
            f"log-normalised values; leave out {option_name('library_size')}."
        )
    try:
        values = np.atleast_1d(np.asarray(library_size, dtype=float)).ravel()
    except (TypeError, ValueError):
        values = np.array([np.nan])
    if values.size == 0 or not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise SctraceInputError("library_size must be one or more positive, finite total counts (e.g. 5000).")
    return values

