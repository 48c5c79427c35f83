"""The training loss: label-smoothed cross-entropy summed over a batch's target tokens.

loss = Σ_t (1 - ε) · (-log p(y_t)) + ε · mean_v (-log p(v))     (ε = label smoothing)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nmt.data.batches import Batch
from nmt.data.tokenizer import PAD


def batch_loss(
    model: torch.nn.Module,
    batch: Batch,
    label_smoothing: float = 0.0,
    every_position: bool = False,
) -> torch.Tensor:
    """Summed (label-smoothed) cross-entropy over the batch's non-padding target tokens.

    Only real target positions are projected onto the vocabulary: the projection and softmax
    are the largest single cost of a step, and padding would waste a share of them. With
    `every_position`, every position is projected and padding ignored: the same loss, with
    shapes that depend on the batch's size alone (what CUDA graphs need to be replayed).
    """
    states = model.features(batch.src, batch.tgt_in).flatten(0, 1)
    target = batch.tgt_out.flatten()
    if not every_position:
        states = states.index_select(0, batch.target_positions)
        target = target.index_select(0, batch.target_positions)
    logits = model.project(states).float()
    return F.cross_entropy(
        logits, target, ignore_index=PAD, label_smoothing=label_smoothing, reduction="sum"
    )
