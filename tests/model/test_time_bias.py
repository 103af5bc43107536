"""The relative time bias of cross-attention: smooth in the time between cells, nearest first, used by decode."""

import torch

from sctrace.model.embeddings import RelativeTimeBias
from sctrace.model.module import CLS_ID, TraceNet, add_cls


def test_bias_starts_out_favouring_the_nearest_times_and_is_shaped_by_delta_only():
    bias = RelativeTimeBias(n_heads=3, time_span=8.0, time_steps=4)
    memory_time = torch.tensor([[0.0, 2.0, 4.0, 6.0, 8.0]])
    values = bias(torch.tensor([5.0]), memory_time)  # (1, heads, 1, keys)
    assert values.shape == (1, 3, 1, 5)
    per_key = values[0, 0, 0]
    # |delta| 5, 3, 1, 1, 3 (x 1/8): the two nearest keys tie and lead, the farthest trails.
    assert torch.isclose(per_key[2], per_key[3]) and per_key[2] > per_key[1] > per_key[0]
    assert torch.isclose(per_key[1], per_key[4])
    # One mean gap (span / steps = 2) costs softplus(slope) = 2 logits at initialisation.
    assert torch.isclose(per_key[3] - per_key[4], torch.tensor(2.0), atol=1e-5)
    # Only the difference of times matters.
    shifted = bias(torch.tensor([6.0]), memory_time + 1.0)
    assert torch.allclose(values, shifted, atol=1e-6)


def _net(time_bias: bool) -> TraceNet:
    torch.manual_seed(0)
    return TraceNet(vocab_size=23, n_genes=20, max_len=6, d_model=16, n_heads=2, head_dim=8, n_encoder_layers=1,
                    n_decoder_layers=1, dropout=0.0, time_origin=0.0, time_span=4.0, time_scale=1.0, time_steps=2,
                    time_bias=time_bias).eval()


def test_decode_reads_memory_times_only_with_the_bias():
    source = add_cls(torch.randint(3, 23, (2, 6)))
    context = [(add_cls(torch.randint(3, 23, (2, 6))), 2.0)]
    target = torch.full((2, 7), 2)  # [MASK]
    target[:, 0] = CLS_ID
    for time_bias in (False, True):
        net = _net(time_bias)
        with torch.no_grad():
            z0, z0_pad = net.encode(source, 0.0)
            memory, memory_pad, memory_time = net.build_context(z0, z0_pad, context, 0.0)
            assert memory_time.shape == memory.shape[:2]
            assert torch.equal(memory_time[:, :7], torch.zeros(2, 7)) and torch.equal(memory_time[:, 7:], torch.full((2, 7), 2.0))
            near = net.decode(target, 1.5, memory, memory_pad, memory_time=memory_time)
            moved = net.decode(target, 1.5, memory, memory_pad, memory_time=memory_time.flip(1))
        assert torch.allclose(near, moved) != time_bias
        if time_bias:  # without memory times there is nothing to bias: the plain decoder
            plain = _net(False)
            plain.load_state_dict({k: v for k, v in net.state_dict().items() if not k.startswith("time_bias.")})
            with torch.no_grad():
                assert torch.allclose(net.decode(target, 1.5, memory, memory_pad),
                                      plain.decode(target, 1.5, memory, memory_pad))
