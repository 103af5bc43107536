"""count_sentence: each cell's values follow its own sentence (issue 24)."""

import numpy as np
import pytest
import torch

from sctrace.data.corpus import tokenize_with_spec
from sctrace.data.preprocess import log_normalize
from sctrace.harness.metrics import per_cell_fidelity
from sctrace.model.module import N_SPECIAL, TraceNet, gather_sentences


def test_sentence_ranks_give_each_gene_its_position_and_zero_when_absent():
    net = TraceNet(10 + N_SPECIAL, 10, 8, d_model=16, n_heads=2, head_dim=8, n_encoder_layers=1, n_decoder_layers=1,
                   count_sentence=True)
    cls, pad = 1, 0
    tokens = torch.tensor([[cls, N_SPECIAL + 4, N_SPECIAL + 0, N_SPECIAL + 9, pad], [cls, N_SPECIAL + 2, pad, pad, pad]])
    ranks = net.sentence_ranks(tokens)
    assert ranks.shape == (2, 10)
    assert ranks[0].tolist() == [2, 0, 0, 0, 1, 0, 0, 0, 0, 3] and ranks[1].tolist() == [0, 0, 1] + [0] * 7
    with pytest.raises(ValueError, match="pass tokens"):
        net.count_params(torch.randn(2, 16), torch.full((2,), 100.0))


@pytest.mark.slow
def test_the_values_follow_the_sentence_and_shuffled_sentences_lose_them(small_timecourse, tiny_fast_config):
    """Real held-out cells' sentences decoded into values: per-gene r across cells is high, and falls when each
    cell is handed another cell's sentence; a decoder that ignored the sentence would score the same both ways."""
    from sctrace.estimator import TRACE

    holdout = 4.0
    model = TRACE(small_timecourse, "time", holdout=holdout, seed=0,
                  **{**tiny_fast_config, "count_sentence": True, "max_epochs": 8})
    model.fit(progress=False)
    spec, corpus, net = model.spec, model.corpus, model.net.eval()
    held = small_timecourse[np.isclose(small_timecourse.obs["time"], holdout)]
    counts = held[:, list(spec.genes)].X
    tokens, lengths = tokenize_with_spec(spec, counts, list(spec.genes))
    real = np.asarray(log_normalize(counts).todense())
    depth = torch.as_tensor(np.asarray(counts.sum(1)).ravel(), dtype=torch.float32)
    rng = np.random.default_rng(0)
    pairs = corpus.pairs[rng.choice(len(corpus.pairs), len(tokens))]
    context_columns = [k for k, t in enumerate(spec.time_values) if k > 0]

    def decoded(order: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            z0, pad = net.encode(gather_sentences(corpus.tokens, corpus.lengths, pairs[:, 0]), spec.source_time)
            context = [(gather_sentences(corpus.tokens, corpus.lengths, pairs[:, k]), spec.time_values[k])
                       for k in context_columns]
            memory, memory_pad = net.build_context(z0, pad, context)
            target = gather_sentences(tokens[order], lengths[order], slice(0, len(order)))
            state = net.count_state(net.decode(target, holdout, memory, memory_pad), target)
            mean = net.count_decoder.mean(net.count_params(state, depth, tokens=target)).numpy()
        return np.asarray(log_normalize(mean).todense() if hasattr(log_normalize(mean), "todense") else log_normalize(mean))

    own = per_cell_fidelity(decoded(np.arange(len(tokens))), real)
    shuffled = per_cell_fidelity(decoded(rng.permutation(len(tokens))), real)
    assert own["per_gene_r"] > 0.3 and own["per_cell_r"] > 0.3 and own["spread_ratio"] > 0.2, own
    assert own["per_gene_r"] > shuffled["per_gene_r"] + 0.2, (own, shuffled)
    assert own["per_cell_r"] > shuffled["per_cell_r"] + 0.2, (own, shuffled)
