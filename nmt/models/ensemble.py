"""Models of one vocabulary decoded as one (`nmt translate` with several checkpoints)."""

from __future__ import annotations

import torch
from torch import nn

from nmt.models.base import EncoderDecoder


class Ensemble(EncoderDecoder):
    """Models of one vocabulary decoded as one: each step's log-probabilities are the mean of
    the models' (renormalised). Its state is the list of the members' states."""

    def __init__(self, models: list[EncoderDecoder]):
        super().__init__()
        self.models = nn.ModuleList(models)

    @property
    def max_source_length(self) -> int:
        return min(m.max_source_length for m in self.models)

    @property
    def max_output_length(self) -> int:
        return min(m.max_output_length for m in self.models)

    def log_probs(self, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        members = [m.log_probs(src, tgt_in) for m in self.models]
        return torch.log_softmax(torch.stack(members).mean(0), dim=-1)

    def start(self, src: torch.Tensor, vocab: torch.Tensor | None = None) -> list:
        return [m.start(src, vocab) for m in self.models]

    def step(self, state: list, tokens: torch.Tensor) -> torch.Tensor:
        log_probs = [m.step(s, tokens) for m, s in zip(self.models, state)]
        return torch.log_softmax(torch.stack(log_probs).mean(0), dim=-1)

    def reorder(
        self, state: list, order: torch.Tensor, source_order: torch.Tensor | None = None
    ) -> None:
        for m, s in zip(self.models, state):
            m.reorder(s, order, source_order)

    def compile_decoding(self) -> bool:
        return all([m.compile_decoding() for m in self.models])

    def cross_attention(self, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        return torch.stack([m.cross_attention(src, tgt_in) for m in self.models]).mean(0)
