"""Attention modules. Every mechanism has the same call, so the model can swap one for another:

    out, weights = attn(query, memory, key_padding_mask=..., causal=..., need_weights=...)

- query (B, L, d_model); memory (B, S, d_model) is the key/value source (the query itself for
  self-attention, the encoder output for cross-attention);
- key_padding_mask (B, S), True where the key is padding;
- causal: query position i sees key positions <= i (decoder self-attention, full sequences);
- weights (B, H, L, S) when need_weights, else None.

A search's steps do not call `forward`: nmt.models.incremental uses the projections, `scores`
and `attend` with keys and values it keeps.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _rows(linear: nn.Linear, start: int, stop: int) -> nn.Linear:
    """A linear layer computing output rows start..stop of `linear` (a copy of its weights)."""
    part = torch.nn.utils.skip_init(nn.Linear, linear.in_features, stop - start)
    with torch.no_grad():
        part.weight.copy_(linear.weight[start:stop])
        part.bias.copy_(linear.bias[start:stop])
    return part


# Below this many multiply-adds per matrix (rows x columns x inner size) PyTorch's CPU `bmm`
# runs its own loop for small matrices instead of the BLAS (aten's bmm_out_or_baddbmm_).
_SMALL_BMM = 400


def weighted_sum(weights: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """weights (B, H, L, S) @ v (B, H, S, Dh). With one query and S·Dh below PyTorch's small-
    matrix bound (a decoding step's first dozen positions, short sources) that loop took 4x as
    long as a broadcast product summed over S, which adds the same terms in the same order
    (equal results; docs/experiments/decoding.md, "Issue 38")."""
    if weights.shape[-2] == 1 and v.device.type == "cpu" and v.shape[-2] * v.shape[-1] < _SMALL_BMM:
        return (weights.transpose(-1, -2) * v).sum(dim=-2, keepdim=True)
    return weights @ v


class Attention(nn.Module):
    """What every mechanism shares: the Q/K/V projections, heads and masks.

    Self-attention projects Q, K and V with one (3·d_model × d_model) `in_proj`, laid out like
    torch.nn.MultiheadAttention's in_proj_weight; cross-attention (`cross=True`) reads a fixed
    memory, so it projects the query with `q_proj` and the memory with `kv_proj` (decoding
    projects the memory once per sentence). Projections are split into `heads` heads of
    d_model/heads, and the heads' outputs are merged by `out_proj`. A subclass says only how a
    query and a key are scored (`scores`), and may compute the whole product faster (`attend`).
    """

    def __init__(self, d_model: int, heads: int, dropout: float = 0.0, cross: bool = False):
        super().__init__()
        self.d_model, self.heads, self.head_dim = d_model, heads, d_model // heads
        self.dropout = dropout
        self.cross = cross
        # Xavier-initialised weights and zero biases, drawn as one (3·d_model × d_model) matrix
        # whatever the layout, so a recipe starts from the same weights either way.
        in_proj = nn.Linear(d_model, 3 * d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        for linear in (in_proj, self.out_proj):
            nn.init.xavier_uniform_(linear.weight)
            nn.init.zeros_(linear.bias)
        if cross:
            self.q_proj = _rows(in_proj, 0, d_model)
            self.kv_proj = _rows(in_proj, d_model, 3 * d_model)
        else:
            self.in_proj = in_proj

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape  # (B, N, H*Dh) -> (B, H, N, Dh)
        return x.view(b, n, self.heads, self.head_dim).transpose(1, 2)

    def _project(
        self, query: torch.Tensor, memory: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.cross:
            k, v = self.kv_proj(memory).chunk(2, dim=-1)
            return self._split(self.q_proj(query)), self._split(k), self._split(v)
        q, k, v = self.in_proj(query).chunk(3, dim=-1)
        if memory is not query:  # self-attention over another sequence (tests, mostly)
            _, k, v = self.in_proj(memory).chunk(3, dim=-1)
        return self._split(q), self._split(k), self._split(v)

    def forward(
        self,
        query: torch.Tensor,
        memory: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        causal: bool = False,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        d = self.d_model
        q, k, v = self._project(query, memory)
        mask = None
        if key_padding_mask is not None:
            mask = ~key_padding_mask[:, None, None, :]  # True = may attend
        L, S = q.shape[2], k.shape[2]
        # Plain bools, not symbolic ones: under torch.compile with dynamic shapes `L == S` is
        # symbolic, and a fused kernel's `is_causal` must be a bool (else a graph break in
        # every decoder layer). Self-attention (memory is query) is square without asking.
        square = memory is query or bool(L == S)
        causal = bool(causal and L > 1)
        # A fused kernel applies a plain causal mask itself: building it would be two more
        # operations per layer and update for nothing.
        in_kernel = self.causal_in_kernel and mask is None and square and not need_weights
        if causal and not in_kernel:
            past = torch.ones(L, S, dtype=torch.bool, device=q.device).tril(diagonal=S - L)
            mask = past if mask is None else mask & past
        if need_weights:
            out, weights = self.attend_explicit(q, k, v, mask)
        else:
            # `causal` tells a fused kernel it may apply the mask itself (top-left aligned).
            out, weights = self.attend(q, k, v, mask, causal and square), None
        b, _, n, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, d)), weights

    # Whether `attend` applies a plain causal mask itself when given `causal` and no mask.
    causal_in_kernel = False

    def scores(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """(B, H, L, Dh) queries and (B, H, S, Dh) keys -> (B, H, L, S) scores."""
        raise NotImplementedError

    def attend_explicit(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """softmax(scores) V, written out; returns the output and the weights."""
        scores = self.scores(q, k)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        weights = scores.softmax(dim=-1)
        return weighted_sum(F.dropout(weights, self.dropout, self.training), v), weights

    def attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        mask: torch.Tensor | None,
        causal: bool,
    ) -> torch.Tensor:
        return self.attend_explicit(q, k, v, mask)[0]


class MultiHeadAttention(Attention):
    """Scaled dot-product attention (Vaswani et al., 2017): softmax(Q Kᵀ / √d_k) V per head.

    The product runs in F.scaled_dot_product_attention, which picks fused kernels (flash,
    memory-efficient) where the device has them.
    """

    causal_in_kernel = True

    def scores(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)

    def attend(self, q, k, v, mask, causal):
        dropout = self.dropout if self.training else 0.0
        if causal and (mask is None or mask.dim() == 2):
            mask = None  # the causal mask alone: let the kernel apply it
        else:
            causal = False
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=causal
        )


class LuongAttention(Attention):
    """Multiplicative attention (Luong, Pham & Manning, 2015), per head, unscaled:
    `dot`: score(q, k) = qᵀk;  `general`: score(q, k) = qᵀ W_a k, with one W_a per head.

    Both reduce to a dot product (of q, or of q W_a, with k), so the product runs in
    F.scaled_dot_product_attention with scale 1. `scaled=True` divides the scores by
    sqrt(d_head) as multi-head attention does (not in the paper; an option to measure).
    """

    def __init__(
        self,
        d_model,
        heads,
        dropout=0.0,
        cross=False,
        score: str = "general",
        scaled: bool = False,
    ):
        super().__init__(d_model, heads, dropout, cross)
        self.score = score
        self.scale = 1.0 / math.sqrt(self.head_dim) if scaled else 1.0
        if score == "general":
            eye = torch.eye(self.head_dim).expand(heads, -1, -1)
            # Start at the identity (the `dot` score) plus noise, so both variants start alike.
            self.w_a = nn.Parameter(eye + 0.02 * torch.randn(heads, self.head_dim, self.head_dim))

    def _query(self, q: torch.Tensor) -> torch.Tensor:
        if self.score != "general":
            return q
        # Not `q @ self.w_a`: broadcasting (H, Dh, Dh) over the batch copies W_a once per
        # batch row, which made decoding (B = sentences x beam) about 15x slower here.
        return torch.einsum("bhld,hde->bhle", q, self.w_a)

    def scores(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return self._query(q) @ k.transpose(-1, -2) * self.scale

    def attend(self, q, k, v, mask, causal):
        dropout = self.dropout if self.training else 0.0
        return F.scaled_dot_product_attention(
            self._query(q), k, v, attn_mask=mask, dropout_p=dropout, scale=self.scale
        )


def _additive_gate(q2: torch.Tensor, k2: torch.Tensor) -> torch.Tensor:
    """σ(q2_l + k2_s) for every (query, key) pair: (B, H, l, Dh), (B, H, S, Dh) -> (B, H, l, S, Dh).

    With q2 = 2q and k2 = 2k this is (1 + tanh(q + k)) / 2: the scores are written in terms of
    the sigmoid because PyTorch's CPU sigmoid is about 3.5x faster than its tanh (2.4 against
    8.5 ns an element on one AVX2 core, docs/experiments/attention.md), and this is the largest tensor of a
    Bahdanau model's step.
    """
    return (q2.unsqueeze(3) + k2.unsqueeze(2)).sigmoid_()


class _AdditiveScores(torch.autograd.Function):
    """scores[b, h, l, s] = v_h · tanh(q[b, h, l] + k[b, h, s]), computed `step` queries at a time.

    tanh(x) = 2σ(2x) − 1, so a score is 2 v_h · σ(2q + 2k) − Σ v_h, and the derivative of the
    tanh, 1 − tanh², is 4σ(1 − σ). Only 2q, 2k and v are kept for the backward pass, which
    recomputes each chunk's σ and differentiates it by hand, so memory holds one chunk of
    B·H·step·S·Dh values at a time in both passes (autograd would keep every chunk, or,
    checkpointed, rebuild each chunk's graph).
    """

    @staticmethod
    def forward(ctx, q, k, v, step):  # noqa: ANN001 - autograd.Function signature
        b, h, length, dh = q.shape
        n_keys = k.shape[2]
        q2, k2 = q * 2, k * 2
        scores = q.new_empty(b, h, length, n_keys)
        v_col = (v * 2).view(1, h, dh, 1)
        for start in range(0, length, step):
            gate = _additive_gate(q2[:, :, start : start + step], k2)
            rows = gate.shape[2]
            flat = gate.view(b, h, rows * n_keys, dh) @ v_col  # (B, H, rows·S, 1)
            scores[:, :, start : start + rows] = flat.view(b, h, rows, n_keys)
        scores -= v.sum(1).view(1, h, 1, 1)
        ctx.save_for_backward(q2, k2, v)  # the backward pass reads only the doubled inputs
        ctx.step = step
        return scores

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001
        q2, k2, v = ctx.saved_tensors
        b, h, length, dh = q2.shape
        n_keys = k2.shape[2]
        grad = grad.contiguous()
        dq = torch.empty_like(q2)
        dk = torch.zeros_like(k2)
        g_sigma = torch.zeros(b, h, 1, dh, dtype=q2.dtype, device=q2.device)
        for start in range(0, length, ctx.step):
            gate = _additive_gate(q2[:, :, start : start + ctx.step], k2)
            rows = gate.shape[2]
            g = grad[:, :, start : start + rows]  # (B, H, rows, S)
            # d score / d v_h = sum over (b, l, s) of g · tanh(...) = 2 Σ g·σ − Σ g
            g_sigma += g.reshape(b, h, 1, rows * n_keys) @ gate.view(b, h, rows * n_keys, dh)
            # d score / d pre-activation = g · v_h · 4σ(1 − σ); v_h and 4 factor out of the sums.
            local = gate.addcmul_(gate, gate, value=-1).mul_(g.unsqueeze(-1))
            dq[:, :, start : start + rows] = local.sum(3)
            dk += local.sum(2)
        v_row = v.view(1, h, 1, dh) * 4
        dv = 2 * g_sigma.sum(0).view(h, dh) - grad.sum((0, 2, 3)).view(h, 1)
        return dq * v_row, dk * v_row, dv, None


class BahdanauAttention(Attention):
    """Additive attention (Bahdanau, Cho & Bengio, 2015), per head:
    score(q, k) = vᵀ tanh(W_q q + W_k k), where W_q q and W_k k are the head's slices of the
    Q and K projections (their biases included) and v has one vector per head.

    The tanh is taken over every (query, key) pair: B·H·L·S·Dh values, far more than any other
    tensor in the model. `_AdditiveScores` computes it in chunks of query positions so that at
    most `chunk_elements` of them exist at once, in the forward and in the backward pass (which
    recomputes them rather than keeping them): memory stays bounded, at the cost of computing
    the tanh (as a sigmoid) twice while training.
    """

    chunk_elements = 1 << 24  # 64 MiB of fp32 per chunk

    def __init__(self, d_model, heads, dropout=0.0, cross=False):
        super().__init__(d_model, heads, dropout, cross)
        self.v = nn.Parameter(torch.empty(heads, self.head_dim).uniform_(-0.1, 0.1))

    def scores(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        b, h, _, dh = q.shape
        step = max(1, self.chunk_elements // max(1, b * h * k.shape[2] * dh))
        # Contiguous inputs give a contiguous gate (elementwise ops follow their inputs' strides).
        return _AdditiveScores.apply(q.contiguous(), k.contiguous(), self.v.to(q.dtype), step)
