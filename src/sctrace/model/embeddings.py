"""Token, gene-rank and real-valued time embeddings."""

from __future__ import annotations

import math
from typing import cast

import torch
from torch import nn


def sinusoidal_time_encoding(time: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal encoding of real time values, so unseen (in-between or later) times have an encoding.

    Parameters
    ----------
    time
        (batch,) float time values, already scaled (see :class:`CellEmbedding`).
    dim
        Embedding size (even sizes use sin/cos halves; an odd size pads one zero).

    Returns
    -------
    (batch, dim) float tensor.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=time.device, dtype=torch.float32) / max(half, 1))
    angles = time.float()[:, None] * freqs[None, :]
    encoding = torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)
    if dim % 2:
        encoding = torch.nn.functional.pad(encoding, (0, 1))
    return encoding


class CellEmbedding(nn.Module):
    """Embeds a [CLS]-prefixed gene-token sentence at a real time value.

    token embedding + learnable gene-rank embedding (position 0 is [CLS]) + sinusoidal time encoding.
    Time is mapped to ``(t - time_origin) / time_span * time_scale`` so the encoding's frequencies cover the
    observed range whatever unit (hours, days) the data use.

    ``rank_encoding="unified"`` is the paper's third positional scenario (section 5.3): the time points are laid
    end to end as one long sentence and a single sinusoidal code is read at ``block * (max_len + 1) + rank``, with
    no time code of its own. ``block`` is the real time in units of the mean gap between the ``time_steps + 1``
    observed times, so observed times sit about one sentence apart and an unseen time falls between them.
    """

    rank_table: torch.Tensor  # buffer, with rank_encoding="sinusoidal"

    def __init__(
        self,
        vocab_size: int,
        d_model: int,
        max_len: int,
        *,
        rank_encoding: str = "learnable",
        time_origin: float = 0.0,
        time_span: float = 1.0,
        time_scale: float = 100.0,
        time_steps: int = 1,
        dropout: float = 0.0,
        pad_id: int = 0,
    ):
        super().__init__()
        self.d_model = d_model
        self.token = nn.Embedding(vocab_size, d_model, padding_idx=pad_id)
        self.rank_encoding = rank_encoding
        if rank_encoding == "learnable":
            self.rank = nn.Embedding(max_len + 1, d_model)
        elif rank_encoding == "sinusoidal":
            positions = torch.arange(max_len + 1, dtype=torch.float32)
            self.register_buffer("rank_table", sinusoidal_time_encoding(positions, d_model), persistent=False)
        elif rank_encoding != "unified":
            raise ValueError(f"unknown rank encoding {rank_encoding!r}")
        self.time_origin = float(time_origin)
        self.time_span = float(time_span) if time_span > 0 else 1.0
        self.time_scale = float(time_scale)
        self.block_length = max_len + 1
        self.time_steps = max(int(time_steps), 1)
        self.dropout = nn.Dropout(dropout)

    def scale_time(self, time: torch.Tensor) -> torch.Tensor:
        return (time - self.time_origin) / self.time_span * self.time_scale

    def forward(self, tokens: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
        """tokens: (batch, length) int64 with [CLS] first; time: (batch,) float. Returns (batch, length, d)."""
        length = tokens.shape[1]
        if self.rank_encoding == "unified":
            block = (time.float() - self.time_origin) / self.time_span * self.time_steps
            positions = block[:, None] * self.block_length + torch.arange(length, device=tokens.device)[None, :]
            code = sinusoidal_time_encoding(positions.reshape(-1), self.d_model).view(*positions.shape, self.d_model)
            return self.dropout(self.token(tokens) + code)
        if self.rank_encoding == "learnable":
            rank = self.rank.weight[:length]
        else:
            rank = self.rank_table[:length]
        time_code = sinusoidal_time_encoding(self.scale_time(time), self.d_model)
        return self.dropout(self.token(tokens) + rank[None] + time_code[:, None, :])


class RelativeTimeBias(nn.Module):
    """Per-head cross-attention bias from the time between the decoded cell and each memory cell.

    Why: an absolute time code added to the tokens moves by ~0.25 in norm across the observed span against ~8 for
    a token embedding, and training only ever asks for the observed times, so the decoder learns a lookup of those
    times and an unseen one gets the sentences of a trained neighbour. A bias on the attention logits that depends
    only on ``delta = (t_target - t_memory) / span`` is learned from every pair of observed times and is smooth in
    ``delta``, so a time between two observed ones attends to both by its distance to each. Each head's bias is
    ``-softplus(slope) * |delta| * n_steps + mlp(delta)``: it starts out favouring the nearest times (``n_steps``,
    the observed gaps, puts one mean gap at ``|delta| * n_steps = 1``) and the small MLP, starting at zero, learns
    any other shape (e.g. earlier times over later ones).
    """

    def __init__(self, n_heads: int, time_span: float, time_steps: int, hidden: int = 16):
        super().__init__()
        self.time_span = float(time_span) if time_span > 0 else 1.0
        self.time_steps = max(int(time_steps), 1)
        self.slope = nn.Parameter(torch.full((n_heads,), math.log(math.expm1(2.0))))  # softplus = 2
        self.mlp = nn.Sequential(nn.Linear(2, hidden), nn.GELU(), nn.Linear(hidden, n_heads))
        head = cast(nn.Linear, self.mlp[2])
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)

    def forward(self, time: torch.Tensor, memory_time: torch.Tensor) -> torch.Tensor:
        """time: (batch,) target times; memory_time: (batch, n_key). Returns (batch, n_heads, 1, n_key) float."""
        delta = (time.float()[:, None] - memory_time.float()) / self.time_span  # (batch, n_key)
        features = torch.stack([delta, delta.abs()], dim=-1)
        bias = -nn.functional.softplus(self.slope) * (delta.abs() * self.time_steps)[..., None] + self.mlp(features)
        return bias.permute(0, 2, 1).unsqueeze(2)
