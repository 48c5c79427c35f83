"""The encoder-decoder Transformer (Vaswani et al., 2017), built from a ModelConfig.

    embed(x) = E[x] · √d_model + PE(pos)            PE(pos, 2i) = sin(pos / 10000^(2i/d_model))
                                                    PE(pos, 2i+1) = cos(pos / 10000^(2i/d_model))
    pre-norm layer:  x = x + Dropout(Sublayer(LayerNorm(x)))   (a final LayerNorm ends each stack)
    post-norm layer: x = LayerNorm(x + Dropout(Sublayer(x)))
    FFN(x) = W₂ · Dropout(act(W₁ x + b₁)) + b₂        act: relu, gelu or silu

The decoder's output projection is its input embedding (tied); with a joint vocabulary and
`share_all_embeddings` the encoder shares that matrix too. `output_bias` adds a fixed vector
to the logits (an imported Marian model's final_logits_bias).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nmt.config import ModelConfig
from nmt.data.tokenizer import PAD
from nmt.models import incremental
from nmt.models.attention import (
    Attention,
    BahdanauAttention,
    LuongAttention,
    MultiHeadAttention,
)
from nmt.models.base import Dropout, EncoderDecoder
from nmt.models.compiled import CompiledDecoding
from nmt.models.incremental import TransformerState


def build_attention(cfg: ModelConfig, site: str) -> Attention:
    """The attention mechanism the recipe names for `site` (the single place that chooses it).

    Cross-attention reads a fixed memory, so decoding projects its keys/values once per sentence.
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
        self.activation = {"relu": F.relu, "gelu": F.gelu, "silu": F.silu}[cfg.activation]
        self.dropout = Dropout(cfg.activation_dropout)
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
        self.dropout = Dropout(cfg.dropout)
        self.pre_norm = cfg.norm == "pre"

    def forward(self, x: torch.Tensor, sublayer: Any) -> torch.Tensor:
        return self.add(x, sublayer(self.input(x)))

    # The two halves, for the decoding step (nmt.models.incremental), which calls the sublayers
    # itself.
    def input(self, x: torch.Tensor) -> torch.Tensor:
        """What the sublayer reads: x, layer-normed first with pre-norm."""
        return self.norm(x) if self.pre_norm else x

    def add(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """x plus the sublayer's output (dropped out while training), layer-normed after with
        post-norm."""
        out = self.dropout(out)
        return x + out if self.pre_norm else self.norm(x + out)


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
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = self.self_block(x, lambda h: self.self_attn(h, h, causal=True)[0])
        weights = None

        def cross(h: torch.Tensor) -> torch.Tensor:
            nonlocal weights
            out, weights = self.cross_attn(
                h,
                memory,
                key_padding_mask=src_pad_mask,
                need_weights=need_weights,
            )
            return out

        x = self.cross_block(x, cross)
        return self.ff_block(x, self.ff), weights


class Transformer(EncoderDecoder):
    # The compiled decoding functions, once `compile_decoding` is called (nmt.models.compiled).
    compiled_decoder: CompiledDecoding | None = None

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
        # The output projection is the target embedding; a module of its own so that int8
        # quantization can replace it (the embedding lookup keeps the float table).
        self.output_projection = torch.nn.utils.skip_init(
            nn.Linear, cfg.d_model, tgt_vocab, bias=False
        )
        self.output_projection.weight = self.tgt_embed.weight
        if cfg.output_bias:  # a buffer: fixed, as Marian's final_logits_bias is in transformers
            self.register_buffer("output_bias", torch.zeros(tgt_vocab))
        self.register_buffer(
            "positions", sinusoidal_positions(cfg.max_positions, cfg.d_model), persistent=False
        )
        self.dropout = Dropout(cfg.dropout)
        self.encoder_layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.encoder_layers))
        self.decoder_layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.decoder_layers))
        pre = cfg.norm == "pre"
        self.encoder_norm = nn.LayerNorm(cfg.d_model) if pre else nn.Identity()
        self.decoder_norm = nn.LayerNorm(cfg.d_model) if pre else nn.Identity()

    @property
    def max_source_length(self) -> int:
        return self.cfg.max_positions - 1  # room for EOS

    @property
    def max_output_length(self) -> int:
        return self.cfg.max_positions - 1  # room for BOS

    def embed_target(self, tokens: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Target tokens (B, T) at positions start.. -> their input vectors (B, T, d_model)."""
        return self._embed(self.tgt_embed, tokens, start)

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
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Target prefix (B, T) -> logits (B, T, V) and the last layer's cross-attention weights
        (B, H, T, S). (A search feeds one position at a time through `step` instead.)"""
        x = self.embed_target(tgt_in)
        weights = None
        for layer in self.decoder_layers:
            x, weights = layer(x, memory, src_pad_mask, need_weights)
        return self.project(self.decoder_norm(x)), weights

    # -- training ------------------------------------------------------------------------------

    def features(self, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: the decoder's output states (B, T, d_model) for a target prefix."""
        memory, pad_mask = self.encode(src)
        x = self.embed_target(tgt_in)
        for layer in self.decoder_layers:
            x, _ = layer(x, memory, pad_mask)
        return self.decoder_norm(x)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """Decoder states -> vocabulary logits."""
        if self.cfg.output_bias:
            return self.output_projection(x) + self.output_bias
        return self.output_projection(x)

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        return self.project(self.features(src, tgt_in))

    def cross_attention(self, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        memory, pad_mask = self.encode(src)
        _, weights = self.decode(tgt_in, memory, pad_mask, need_weights=True)
        return weights.float().mean(dim=1)

    # -- search: nmt.models.incremental ------------------------------------------------------

    def start(self, src: torch.Tensor, vocab: torch.Tensor | None = None) -> TransformerState:
        return incremental.start(self, src, vocab)

    def step(self, state: TransformerState, tokens: torch.Tensor) -> torch.Tensor:
        return incremental.next_log_probs(self, state, tokens)

    def reorder(
        self,
        state: TransformerState,
        order: torch.Tensor,
        source_order: torch.Tensor | None = None,
    ) -> None:
        incremental.reorder(state, order, source_order)

    def compile_decoding(self) -> bool:
        self.compiled_decoder = CompiledDecoding(self)
        return True
