"""Pre-norm transformer blocks on torch's scaled_dot_product_attention.

Written here rather than with ``nn.MultiheadAttention`` because the paper's presets fix the head size
independently of the model size (e.g. d=128 with 8 heads of 64), which ``nn.MultiheadAttention`` cannot
express; ``F.scaled_dot_product_attention`` still picks fused (flash / memory-efficient) kernels on GPU.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    """Multi-head attention with an explicit head size; keys may be padded (``key_padding_mask`` True = pad).

    No dropout on attention probabilities: on CPU it forces SDPA's slow path and drew a Bernoulli mask of
    batch x heads x queries x keys per call (40% of a training step); residual dropout regularises instead.
    """

    def __init__(self, d_model: int, n_heads: int, head_dim: int):
        super().__init__()
        self.n_heads, self.head_dim = n_heads, head_dim
        inner = n_heads * head_dim
        self.q = nn.Linear(d_model, inner)
        self.kv = nn.Linear(d_model, 2 * inner)
        self.out = nn.Linear(inner, d_model)

    def project_memory(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of memory (batch, n_key, d), each (batch, n_heads, n_key, head_dim)."""
        k, v = self.kv(memory).view(memory.shape[0], -1, 2, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return k, v

    def forward(
        self,
        x: torch.Tensor,
        memory: torch.Tensor,
        key_padding_mask: torch.Tensor | None,
        memory_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """x: (batch, n_query, d); memory: (batch, n_key, d); key_padding_mask: (batch, n_key) bool.

        memory_kv: :meth:`project_memory` of ``memory``, computed once by a caller that attends to the same
        memory many times (MaskGIT generation); the result is the same.
        """
        batch, n_query, _ = x.shape
        q = self.q(x).view(batch, n_query, self.n_heads, self.head_dim).transpose(1, 2)
        k, v = memory_kv if memory_kv is not None else self.project_memory(memory)
        attn_mask = None
        if key_padding_mask is not None:
            # Boolean SDPA masks mean "may attend"; broadcast over heads and queries.
            attn_mask = (~key_padding_mask)[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.out(out.transpose(1, 2).reshape(batch, n_query, -1))


class FeedForward(nn.Sequential):
    def __init__(self, d_model: int, dropout: float, expansion: int = 4):
        super().__init__(
            nn.Linear(d_model, expansion * d_model), nn.GELU(), nn.Dropout(dropout), nn.Linear(expansion * d_model, d_model)
        )


class EncoderLayer(nn.Module):
    def __init__(self, d_model: int, n_heads: int, head_dim: int, dropout: float):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.attn = Attention(d_model, n_heads, head_dim)
        self.ff = FeedForward(d_model, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.drop(self.attn(h, h, padding_mask))
        return x + self.drop(self.ff(self.norm2(x)))


class DecoderLayer(nn.Module):
    """Bidirectional self-attention over the target sentence, then cross-attention to the context memory."""

    def __init__(self, d_model: int, n_heads: int, head_dim: int, dropout: float):
        super().__init__()
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(d_model), nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.self_attn = Attention(d_model, n_heads, head_dim)
        self.cross_attn = Attention(d_model, n_heads, head_dim)
        self.ff = FeedForward(d_model, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(
        self,
        x: torch.Tensor,
        padding_mask: torch.Tensor,
        memory: torch.Tensor,
        memory_padding_mask: torch.Tensor,
        memory_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.drop(self.self_attn(h, h, padding_mask))
        x = x + self.drop(self.cross_attn(self.norm2(x), memory, memory_padding_mask, memory_kv))
        return x + self.drop(self.ff(self.norm3(x)))


class Stack(nn.Module):
    """A stack of encoder or decoder layers with a final LayerNorm (pre-norm convention)."""

    def __init__(self, layer_cls: type, n_layers: int, d_model: int, n_heads: int, head_dim: int, dropout: float):
        super().__init__()
        self.layers = nn.ModuleList(layer_cls(d_model, n_heads, head_dim, dropout) for _ in range(n_layers))
        self.norm = nn.LayerNorm(d_model)

    def forward(
        self,
        x: torch.Tensor,
        padding_mask: torch.Tensor,
        *memory_args: torch.Tensor,
        memory_kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> torch.Tensor:
        """memory_kv (decoder stacks): :meth:`project_memory` of the memory in ``memory_args``."""
        for i, layer in enumerate(self.layers):
            layer_kv = () if memory_kv is None else (memory_kv[i],)
            x = layer(x, padding_mask, *memory_args, *layer_kv)
        return self.norm(x)

    def project_memory(self, memory: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Every decoder layer's cross-attention keys and values of memory (batch, n_key, d), for callers that
        decode against one memory many times: the projections then run once instead of on every call."""
        return [cast(DecoderLayer, layer).cross_attn.project_memory(memory) for layer in self.layers]
