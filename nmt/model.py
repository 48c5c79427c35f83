"""The encoder-decoder Transformer (Vaswani et al., 2017), built from a ModelConfig.

    embed(x) = E[x] · √d_model + PE(pos)            PE(pos, 2i) = sin(pos / 10000^(2i/d_model))
                                                    PE(pos, 2i+1) = cos(pos / 10000^(2i/d_model))
    pre-norm layer:  x = x + Dropout(Sublayer(LayerNorm(x)))   (a final LayerNorm ends each stack)
    post-norm layer: x = LayerNorm(x + Dropout(Sublayer(x)))
    FFN(x) = W₂ · Dropout(act(W₁ x + b₁)) + b₂

The decoder's output projection is its input embedding (transposed); with a joint vocabulary and
`share_all_embeddings` the encoder shares that matrix too.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nmt.attention import (
    Attention,
    BahdanauAttention,
    LuongAttention,
    MultiHeadAttention,
    reorder_cache,
)
from nmt.config import ModelConfig
from nmt.tokenizer import PAD

# One dict per decoder layer: {"self": {...}, "cross": {...}}, filled by the attention modules.
DecoderCache = list[dict[str, dict[str, torch.Tensor]]]


def build_attention(cfg: ModelConfig, site: str) -> Attention:
    """The attention mechanism the recipe names for `site` (the single place that chooses it).

    Cross-attention reads a fixed memory, so its keys/values are cached once per sentence.
    """
    kind = cfg.attention_at(site)
    args = (cfg.d_model, cfg.heads, cfg.attention_dropout, site == "cross")
    if kind == "multihead":
        return MultiHeadAttention(*args)
    if kind == "luong":
        return LuongAttention(*args, score=cfg.luong_score, scaled=cfg.luong_scaled)
    if kind == "bahdanau":
        return BahdanauAttention(*args)
    raise ValueError(f"unknown attention {kind!r}")


def sinusoidal_positions(length: int, d_model: int) -> torch.Tensor:
    position = torch.arange(length, dtype=torch.float64)[:, None]
    inv_freq = torch.exp(
        torch.arange(0, d_model, 2, dtype=torch.float64) * (-math.log(1e4) / d_model)
    )
    table = torch.zeros(length, d_model, dtype=torch.float64)
    table[:, 0::2] = torch.sin(position * inv_freq)
    table[:, 1::2] = torch.cos(position * inv_freq)[:, : d_model // 2]
    return table.float()


class FeedForward(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.d_model, cfg.ff_dim)
        self.fc2 = nn.Linear(cfg.ff_dim, cfg.d_model)
        self.activation = F.relu if cfg.activation == "relu" else F.gelu
        self.dropout = nn.Dropout(cfg.activation_dropout)
        for fc in (self.fc1, self.fc2):
            nn.init.xavier_uniform_(fc.weight)
            nn.init.zeros_(fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.dropout(self.activation(self.fc1(x))))


class Residual(nn.Module):
    """A sublayer wrapped with dropout, the residual connection and its layer norm."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm = nn.LayerNorm(cfg.d_model)
        self.dropout = nn.Dropout(cfg.dropout)
        self.pre_norm = cfg.norm == "pre"

    def forward(self, x: torch.Tensor, sublayer: Any) -> torch.Tensor:
        if self.pre_norm:
            return x + self.dropout(sublayer(self.norm(x)))
        return self.norm(x + self.dropout(sublayer(x)))


class EncoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.self_attn = build_attention(cfg, "encoder")
        self.ff = FeedForward(cfg)
        self.attn_block, self.ff_block = Residual(cfg), Residual(cfg)

    def forward(self, x: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
        x = self.attn_block(x, lambda h: self.self_attn(h, h, key_padding_mask=pad_mask)[0])
        return self.ff_block(x, self.ff)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.self_attn = build_attention(cfg, "decoder")
        self.cross_attn = build_attention(cfg, "cross")
        self.ff = FeedForward(cfg)
        self.self_block, self.cross_block, self.ff_block = (
            Residual(cfg),
            Residual(cfg),
            Residual(cfg),
        )

    def forward(
        self,
        x: torch.Tensor,
        memory: torch.Tensor,
        src_pad_mask: torch.Tensor,
        cache: dict[str, dict[str, torch.Tensor]] | None = None,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        self_cache = cache["self"] if cache is not None else None
        cross_cache = cache["cross"] if cache is not None else None
        x = self.self_block(x, lambda h: self.self_attn(h, h, causal=True, cache=self_cache)[0])
        weights = None

        def cross(h: torch.Tensor) -> torch.Tensor:
            nonlocal weights
            out, weights = self.cross_attn(
                h,
                memory,
                key_padding_mask=src_pad_mask,
                cache=cross_cache,
                need_weights=need_weights,
            )
            return out

        x = self.cross_block(x, cross)
        return self.ff_block(x, self.ff), weights


class Seq2Seq(nn.Module):
    def __init__(self, cfg: ModelConfig, src_vocab: int, tgt_vocab: int, share_all: bool):
        super().__init__()
        self.cfg = cfg
        self.scale = math.sqrt(cfg.d_model)
        self.tgt_embed = nn.Embedding(tgt_vocab, cfg.d_model, padding_idx=PAD)
        nn.init.normal_(self.tgt_embed.weight, 0.0, cfg.d_model**-0.5)
        nn.init.zeros_(self.tgt_embed.weight[PAD])
        if share_all:
            if src_vocab != tgt_vocab:
                raise ValueError("shared embeddings need one vocabulary")
            self.src_embed = self.tgt_embed
        else:
            self.src_embed = nn.Embedding(src_vocab, cfg.d_model, padding_idx=PAD)
            nn.init.normal_(self.src_embed.weight, 0.0, cfg.d_model**-0.5)
            nn.init.zeros_(self.src_embed.weight[PAD])
        self.register_buffer(
            "positions", sinusoidal_positions(cfg.max_positions, cfg.d_model), persistent=False
        )
        self.dropout = nn.Dropout(cfg.dropout)
        self.encoder_layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.encoder_layers))
        self.decoder_layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.decoder_layers))
        pre = cfg.norm == "pre"
        self.encoder_norm = nn.LayerNorm(cfg.d_model) if pre else nn.Identity()
        self.decoder_norm = nn.LayerNorm(cfg.d_model) if pre else nn.Identity()
        # An int8 copy of the tied output projection, set by nmt.quantize.quantize_int8.
        self.int8_output: nn.Module | None = None

    def _embed(self, embedding: nn.Embedding, tokens: torch.Tensor, start: int = 0) -> torch.Tensor:
        length = tokens.shape[1]
        if start + length > self.cfg.max_positions:
            raise ValueError(
                f"sequence of {start + length} tokens exceeds model.max_positions="
                f"{self.cfg.max_positions}"
            )
        x = embedding(tokens) * self.scale + self.positions[start : start + length]
        return self.dropout(x)

    def encode(self, src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """src (B, S) -> memory (B, S, d_model) and the source padding mask (B, S)."""
        pad_mask = src.eq(PAD)
        x = self._embed(self.src_embed, src)
        for layer in self.encoder_layers:
            x = layer(x, pad_mask)
        return self.encoder_norm(x), pad_mask

    def decode(
        self,
        tgt_in: torch.Tensor,
        memory: torch.Tensor,
        src_pad_mask: torch.Tensor,
        cache: DecoderCache | None = None,
        start: int = 0,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Target prefix (B, T) -> logits (B, T, V) and the last layer's cross-attention weights.

        With a cache, `tgt_in` holds only the new position(s) starting at `start`; keys and values
        of earlier positions come from the cache.
        """
        x, weights = self.decode_features(tgt_in, memory, src_pad_mask, cache, start, need_weights)
        return self.project(x), weights

    def decode_features(
        self,
        tgt_in: torch.Tensor,
        memory: torch.Tensor,
        src_pad_mask: torch.Tensor,
        cache: DecoderCache | None = None,
        start: int = 0,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The decoder's output states (B, T, d_model), before the vocabulary projection."""
        x = self._embed(self.tgt_embed, tgt_in, start)
        weights = None
        for i, layer in enumerate(self.decoder_layers):
            x, weights = layer(
                x, memory, src_pad_mask, None if cache is None else cache[i], need_weights
            )
        return self.decoder_norm(x), weights

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """Decoder states -> vocabulary logits, through the tied target embedding."""
        if self.int8_output is not None:  # set by nmt.quantize.quantize_int8
            return self.int8_output(x)
        return F.linear(x, self.tgt_embed.weight)

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        memory, pad_mask = self.encode(src)
        return self.decode(tgt_in, memory, pad_mask)[0]

    def new_cache(self) -> DecoderCache:
        return [{"self": {}, "cross": {}} for _ in self.decoder_layers]

    @staticmethod
    def reorder(cache: DecoderCache, order: torch.Tensor, cross_order: torch.Tensor | None) -> None:
        """Select cache rows after a search moved its hypotheses: self-attention rows by `order`,
        cross-attention rows by `cross_order` (None: left as they are).

        Beam search passes None while no sentence leaves the batch: the K rows of a sentence
        hold the same source keys/values, so moving hypotheses among them changes nothing, and
        copying them at every step was most of `index_select`'s time in the decoding profile.
        """
        for layer in cache:
            reorder_cache(layer["self"], order)
            if cross_order is not None:
                reorder_cache(layer["cross"], cross_order)


class Ensemble(nn.Module):
    """Models of one vocabulary decoded as one: at each step the search sees the mean of the
    models' log-probabilities (renormalised by its log-softmax). It has the decoding interface
    of Seq2Seq (encode, decode with a cache, new_cache, reorder), so every search works on it.
    """

    def __init__(self, models: list[Seq2Seq]):
        super().__init__()
        self.models = nn.ModuleList(models)
        self.cfg = min((m.cfg for m in models), key=lambda c: c.max_positions)
        self.widths = [m.cfg.d_model for m in models]

    def encode(self, src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # One memory tensor (the models' side by side) so searches can select and repeat rows.
        outputs = [m.encode(src) for m in self.models]
        return torch.cat([memory for memory, _ in outputs], dim=-1), outputs[0][1]

    def decode(
        self,
        tgt_in: torch.Tensor,
        memory: torch.Tensor,
        src_pad_mask: torch.Tensor,
        cache: list | None = None,
        start: int = 0,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        log_probs, weights = [], []
        for i, (model, part) in enumerate(zip(self.models, memory.split(self.widths, dim=-1))):
            logits, w = model.decode(
                tgt_in, part, src_pad_mask, None if cache is None else cache[i], start, need_weights
            )
            log_probs.append(F.log_softmax(logits.float(), dim=-1))
            weights.append(w)
        mean_weights = torch.stack(weights).mean(0) if need_weights else None
        return torch.stack(log_probs).mean(0), mean_weights

    def new_cache(self) -> list[DecoderCache]:
        return [m.new_cache() for m in self.models]

    @staticmethod
    def reorder(
        cache: list[DecoderCache], order: torch.Tensor, cross_order: torch.Tensor | None
    ) -> None:
        for model_cache in cache:
            Seq2Seq.reorder(model_cache, order, cross_order)


def build_model(cfg: ModelConfig, src_vocab: int, tgt_vocab: int, joint_vocab: bool) -> Seq2Seq:
    return Seq2Seq(cfg, src_vocab, tgt_vocab, share_all=joint_vocab and cfg.share_all_embeddings)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
