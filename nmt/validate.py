"""Validation: a model's loss, perplexity and BLEU on the validation set."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from nmt.data import ParallelDataset, collate, token_batches
from nmt.device import autocast
from nmt.loss import batch_loss
from nmt.score import score_lines
from nmt.translate import Translator


@dataclass(frozen=True)
class Validation:
    loss: float  # mean negative log-likelihood per target token, no label smoothing
    bleu: float
    hypotheses: list[str]
    seconds: float

    @property
    def perplexity(self) -> float:
        return math.exp(min(self.loss, 50.0))


@torch.no_grad()
def validation_loss(translator: Translator, data: ParallelDataset, max_tokens: int) -> float:
    """Mean negative log-likelihood per target token over `data` (teacher forcing)."""
    model = translator.model
    model.eval()
    total, tokens = 0.0, 0
    for indices in token_batches(data.src.lengths, data.tgt.lengths, max_tokens):
        batch = collate(data, indices).to(translator.device)
        with autocast(translator.device, translator.precision):
            total += batch_loss(model, batch).item()
        tokens += batch.n_tgt_tokens
    return total / max(tokens, 1)


def validate(
    translator: Translator,
    data: ParallelDataset,
    sources: list[str],
    references: list[str],
    max_tokens: int,
) -> Validation:
    """The loss on `data`, and the BLEU of `translator`'s translations of `sources`."""
    started = time.perf_counter()
    loss = validation_loss(translator, data, max_tokens)
    translator.model.eval()
    hypotheses = translator.translate(sources)
    bleu = score_lines(hypotheses, [references], ["bleu"])[0].score
    return Validation(loss, bleu, hypotheses, time.perf_counter() - started)
