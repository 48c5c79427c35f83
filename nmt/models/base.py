"""What every encoder-decoder model offers to training and to search (`EncoderDecoder`), and the
dropout both architectures use. The builder that picks an architecture is nmt.models.builder.

The interface (`EncoderDecoder`), as fairseq's incremental decoders have it: training and
validation use the first two methods, greedy / beam search and sampling only the rest, so a
search never asks which architecture it decodes.

    features(src, tgt_in) -> states (B, T, d)   teacher forcing: decoder output states
    project(states) -> logits (..., V)          onto the target vocabulary
    log_probs(src, tgt_in) -> (B, T, V)         teacher forcing: next-token log-probabilities
    start(src, vocab=None) -> state             encode a batch; the decoding state, one row each;
                                                `vocab`: a shortlist of target ids, the only
                                                ones `step` then gives a probability
    step(state, tokens (B, n)) -> (B, V)        feed n new tokens per row; log-probabilities of
                                                the next token (float32); the state advances
    reorder(state, order, source_order=None)    select rows after the search moved hypotheses:
                                                the decoder's own rows by `order`, the source
                                                side (encoder output, its mask, cached keys and
                                                values of the source) by `source_order`, or left
                                                in place when None
    cross_attention(src, tgt_in) -> (B, T, S)   attention over the source per target position
    compile_decoding() -> bool                  start and steps compiled from now on, if the
                                                architecture has a compiled step
    max_source_length, max_output_length        the longest input and output the model allows
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nmt.config import ModelConfig


class _KeepMask(torch.autograd.Function):
    """x · mask / keep with mask = uniform < keep; saves only the boolean mask for backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, keep: float) -> torch.Tensor:
        mask = torch.rand_like(x) < keep
        ctx.save_for_backward(mask)
        ctx.scale = 1.0 / keep
        return (x * mask).mul_(ctx.scale)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (mask,) = ctx.saved_tensors
        return (grad * mask).mul_(ctx.scale), None


class Dropout(nn.Module):
    """`nn.Dropout`, with the CPU's mask drawn as `uniform < keep`: PyTorch's CPU `bernoulli_`
    costs about twice as much as `rand_like` and a comparison, and a small model's update on
    the CPU calls dropout 22 times (docs/experiments/training-speed.md). Other devices keep the fused kernel."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if x.device.type != "cpu":
            return F.dropout(x, self.p, True)
        return _KeepMask.apply(x, 1.0 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class EncoderDecoder(nn.Module):
    """The base of every architecture; see the module's docstring for the contract."""

    cfg: ModelConfig

    def features(self, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def project(self, states: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def log_probs(self, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: the log-probabilities (float32) of the next token after each
        target position, (B, T, V), in one pass."""
        return F.log_softmax(self.project(self.features(src, tgt_in)).float(), dim=-1)

    def start(self, src: torch.Tensor, vocab: torch.Tensor | None = None) -> Any:
        raise NotImplementedError

    def step(self, state: Any, tokens: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def reorder(
        self, state: Any, order: torch.Tensor, source_order: torch.Tensor | None = None
    ) -> None:
        raise NotImplementedError

    def cross_attention(self, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def compile_decoding(self) -> bool:
        """Run the search's start and steps compiled from now on, where the architecture
        has a compiled step; False where it has none (and nothing changes)."""
        return False

    @property
    def max_source_length(self) -> int:
        raise NotImplementedError

    @property
    def max_output_length(self) -> int:
        raise NotImplementedError


def next_token_log_probs(logits: torch.Tensor) -> torch.Tensor:
    """Log-softmax over the vocabulary of a decoding step's logits (rows, V), in float32. A
    contiguous float32 tensor on the CPU, outside autograd, is overwritten in place: a fresh
    (sentences x beam x vocabulary) output cost about a tenth of a beam-5 step
    (docs/experiments/decoding.md, "Issue 38")."""
    in_place = logits.dtype == torch.float32 and logits.device.type == "cpu"
    if not in_place or not logits.is_contiguous() or logits.requires_grad:
        return F.log_softmax(logits.float(), dim=-1)
    return torch.ops.aten._log_softmax.out(logits, -1, False, out=logits)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
