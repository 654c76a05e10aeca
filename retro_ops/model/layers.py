"""Transformer pieces shared by the RETRO decoder and its neighbour encoder.

Positions are rotary (no parameters), so the decoder and the encoder need no position tables
and a baseline and a RETRO model have exactly the same decoder parameters. Linear layers and
norms carry no bias: a branch whose input is zero then outputs exactly zero.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ROTARY_BASE = 10_000.0


def rotary_tables(length: int, head_dim: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """cos and sin of the rotary angles, each (length, head_dim // 2), in float32."""
    inv_freq = ROTARY_BASE ** (-torch.arange(0, head_dim, 2, device=device, dtype=torch.float32)
                               / head_dim)  # (head_dim/2,)
    angles = torch.outer(torch.arange(length, device=device, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def apply_rotary(x: Tensor, rope: tuple[Tensor, Tensor]) -> Tensor:
    """Rotate channel pairs (i, i + head_dim/2) of x (..., T, head_dim) by position."""
    cos, sin = (t.to(x.dtype) for t in rope)  # (T, head_dim/2)
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


def layer_norm(width: int) -> nn.LayerNorm:
    return nn.LayerNorm(width, bias=False)


class SelfAttention(nn.Module):
    """Multi-head self-attention with rotary positions; causal in the decoder, bidirectional in
    the encoder (where padded keys can be masked out)."""

    def __init__(self, width: int, n_head: int, dropout: float, causal: bool):
        super().__init__()
        self.n_head, self.causal, self.dropout = n_head, causal, dropout
        self.c_attn = nn.Linear(width, 3 * width, bias=False)
        self.c_proj = nn.Linear(width, width, bias=False)
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor],
                attn_mask: Tensor | None = None) -> Tensor:
        """x (B, T, C); attn_mask (B, 1, T, T) bool, True = may attend (bidirectional only)."""
        q, k, v = self._qkv(x, rope)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, is_causal=self.causal,
            dropout_p=self.dropout if self.training else 0.0)  # (B, n_head, T, head_dim)
        return self._project(y)

    def step(self, x: Tensor, rope: tuple[Tensor, Tensor],
             cache: tuple[list[Tensor], list[Tensor]]) -> Tensor:
        """Causal decoding of one new position x (B, 1, C) after every cached one: its key and
        value join `cache` (keys, values), and it attends to all of it (nothing later exists)."""
        q, k, v = self._qkv(x, rope)
        keys, values = cache
        keys.append(k)
        values.append(v)
        y = F.scaled_dot_product_attention(q, torch.cat(keys, dim=2), torch.cat(values, dim=2))
        return self._project(y)

    def _qkv(self, x: Tensor, rope: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        B, T, C = x.shape
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
                   for t in self.c_attn(x).split(C, dim=2))  # 3 x (B, n_head, T, head_dim)
        return apply_rotary(q, rope), apply_rotary(k, rope), v

    def _project(self, y: Tensor) -> Tensor:
        B, _, T, hd = y.shape
        return self.resid_dropout(self.c_proj(y.transpose(1, 2).contiguous().view(B, T, -1)))


Rope = tuple[Tensor, Tensor]


class CrossAttention(nn.Module):
    """Queries of one width attend to a context of another width (encoder <-> decoder).

    key_mask (N, Tk) drops keys; a row with no key left outputs exactly zero instead of the NaN
    of a softmax over nothing, so "all neighbours masked" means "no contribution". `rope`, a pair
    of rotary tables (queries', keys'), gives the attention relative positions between the two
    sequences (the paper's CCA uses relative positional encodings): then "the token after the
    one aligned with me" is a fixed offset, which a head learns quickly.
    """

    def __init__(self, width: int, context_width: int, n_head: int, dropout: float):
        super().__init__()
        self.n_head, self.dropout = n_head, dropout
        self.q = nn.Linear(width, width, bias=False)
        self.kv = nn.Linear(context_width, 2 * width, bias=False)
        self.c_proj = nn.Linear(width, width, bias=False)
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, context: Tensor, key_mask: Tensor | None = None,
                rope: tuple[Rope, Rope] | None = None) -> Tensor:
        """x (N, Tq, C), context (N, Tk, C_ctx), key_mask (N, Tk) bool; rope: tables of Tq and
        of Tk positions -> (N, Tq, C)."""
        N, Tq, C = x.shape
        Tk, hd = context.shape[1], C // self.n_head
        q = self.q(x).view(N, Tq, self.n_head, hd).transpose(1, 2)  # (N, n_head, Tq, hd)
        k, v = self.kv(context).split(C, dim=2)  # 2 x (N, Tk, C)
        k, v = (t.view(N, Tk, self.n_head, hd).transpose(1, 2) for t in (k, v))  # (N, nh, Tk, hd)
        if rope is not None:
            q, k = apply_rotary(q, rope[0]), apply_rotary(k, rope[1])
        attn_mask, has_key = None, None
        if key_mask is not None:
            has_key = key_mask.any(dim=1)  # (N,)
            # an empty row attends to every key (finite), then is zeroed below
            attn_mask = (key_mask | ~has_key[:, None])[:, None, None, :]  # (N, 1, 1, Tk)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask,
            dropout_p=self.dropout if self.training else 0.0)  # (N, n_head, Tq, hd)
        y = self.c_proj(y.transpose(1, 2).contiguous().view(N, Tq, C))  # (N, Tq, C)
        if has_key is not None:
            y = y.masked_fill(~has_key[:, None, None], 0.0)
        return self.resid_dropout(y)


class MLP(nn.Module):
    def __init__(self, width: int, hidden: int, dropout: float):
        super().__init__()
        self.c_fc = nn.Linear(width, hidden, bias=False)
        self.c_proj = nn.Linear(hidden, width, bias=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x))))  # (B, T, C)
