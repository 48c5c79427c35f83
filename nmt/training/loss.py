"""The training loss: label-smoothed cross-entropy summed over a batch's target tokens.

loss = Σ_t (1 - ε) · (-log p(y_t)) + ε · mean_v (-log p(v))     (ε = label smoothing)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nmt.data.batches import Batch


def batch_loss(model: torch.nn.Module, batch: Batch, label_smoothing: float = 0.0) -> torch.Tensor:
    """Summed (label-smoothed) cross-entropy over the batch's non-padding target tokens.

    Only real target positions are projected onto the vocabulary: the projection and softmax
    are the largest single cost of a step, and padding would waste a share of them.
    """
    states = model.features(batch.src, batch.tgt_in)
    states = states.flatten(0, 1).index_select(0, batch.target_positions)
    logits = model.project(states).float()
    target = batch.tgt_out.flatten().index_select(0, batch.target_positions)
    return F.cross_entropy(logits, target, label_smoothing=label_smoothing, reduction="sum")
