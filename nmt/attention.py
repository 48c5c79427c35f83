"""Attention modules. Every mechanism has the same call, so the model can swap one for another:

    out, weights = attn(query, memory, key_padding_mask=..., causal=..., cache=..., need_weights=...)

- query (B, L, d_model); memory (B, S, d_model) is the key/value source (the query itself for
  self-attention, the encoder output for cross-attention);
- key_padding_mask (B, S), True where the key is padding;
- causal: query position i sees key positions <= i (decoder self-attention, full sequences);
- cache: a dict owned by the caller, used during incremental decoding. Self-attention appends
  each step's keys/values to it; cross-attention (`static_kv=True` at construction) computes the
  projected keys/values of the memory once and reuses them for every later step;
- weights (B, H, L, S) when need_weights, else None.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class MultiHeadAttention(nn.Module):
    """Scaled dot-product attention, softmax(Q Kᵀ / √d_k) V, over `heads` heads.

    Q, K and V come from one (3·d_model × d_model) projection, laid out like
    torch.nn.MultiheadAttention's in_proj_weight; heads are merged by `out_proj`. The product
    itself runs in F.scaled_dot_product_attention, which picks fused kernels where they exist.
    """

    def __init__(self, d_model: int, heads: int, dropout: float = 0.0, static_kv: bool = False):
        super().__init__()
        self.d_model, self.heads, self.head_dim = d_model, heads, d_model // heads
        self.dropout = dropout
        self.static_kv = static_kv
        self.in_proj = nn.Linear(d_model, 3 * d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        nn.init.xavier_uniform_(self.in_proj.weight)
        nn.init.zeros_(self.in_proj.bias)
        nn.init.xavier_uniform_(self.out_proj.weight)
        nn.init.zeros_(self.out_proj.bias)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape  # (B, N, H*Dh) -> (B, H, N, Dh)
        return x.view(b, n, self.heads, self.head_dim).transpose(1, 2)

    def _project_kv(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        d = self.d_model
        kv = F.linear(memory, self.in_proj.weight[d:], self.in_proj.bias[d:])
        k, v = kv.chunk(2, dim=-1)
        return self._split(k), self._split(v)

    def forward(
        self,
        query: torch.Tensor,
        memory: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        causal: bool = False,
        cache: dict[str, torch.Tensor] | None = None,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        d = self.d_model
        if memory is query and cache is None:
            q, k, v = (self._split(t) for t in self.in_proj(query).chunk(3, dim=-1))
        else:
            q = self._split(F.linear(query, self.in_proj.weight[:d], self.in_proj.bias[:d]))
            if cache is not None and self.static_kv and "k" in cache:
                k, v = cache["k"], cache["v"]
            else:
                k, v = self._project_kv(memory)
                if cache is not None:
                    if not self.static_kv and "k" in cache:
                        k = torch.cat([cache["k"], k], dim=2)
                        v = torch.cat([cache["v"], v], dim=2)
                    cache["k"], cache["v"] = k, v
        mask = None
        if key_padding_mask is not None:
            mask = ~key_padding_mask[:, None, None, :]  # SDPA: True = may attend
        # With a cache the query is the newest position and may see every cached key.
        is_causal = causal and cache is None
        if is_causal and mask is not None:
            L, S = q.shape[2], k.shape[2]
            mask = mask & torch.ones(L, S, dtype=torch.bool, device=q.device).tril()
            is_causal = False
        dropout = self.dropout if self.training else 0.0
        weights = None
        if need_weights:
            out, weights = self._attend_explicit(q, k, v, mask, is_causal, dropout)
        else:
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=is_causal
            )
        b, _, n, _ = out.shape
        out = out.transpose(1, 2).reshape(b, n, d)
        return self.out_proj(out), weights

    def _attend_explicit(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        mask: torch.Tensor | None,
        is_causal: bool,
        dropout: float,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The same product written out, for when the weights themselves are wanted."""
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        if is_causal:
            L, S = scores.shape[-2:]
            future = torch.ones(L, S, dtype=torch.bool, device=q.device).triu(1)
            scores = scores.masked_fill(future, float("-inf"))
        weights = scores.softmax(dim=-1)
        return F.dropout(weights, dropout, self.training) @ v, weights


def reorder_cache(cache: dict[str, torch.Tensor], order: torch.Tensor) -> None:
    """Select rows of every cached tensor: beam search calls this when hypotheses move."""
    for key, value in cache.items():
        cache[key] = value.index_select(0, order)
