"""Token, gene-rank and real-valued time embeddings."""

from __future__ import annotations

import math

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

