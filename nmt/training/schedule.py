"""Learning-rate schedules: a linear warm-up to the peak `lr`, then one of three decays.

    warm-up (step <= w):  lr · step / w
    inverse_sqrt:         lr · √(w / step)                                  (never ends)
    linear:               min_lr + (lr - min_lr) · (1 - p)
    cosine:               min_lr + (lr - min_lr) · ½ (1 + cos(π p))
    with p = (step - w) / (end - w), clipped to [0, 1]: the decay reaches min_lr at `end`

`end` is train.max_steps, or the step that training is expected to reach within train.max_time
when that comes first (fitted once, at the end of the warm-up: see nmt.training.loop).
"""

from __future__ import annotations

import math

from nmt.config import TrainConfig


def learning_rate(step: int, cfg: TrainConfig, end: int | None = None) -> float:
    """The learning rate of update number `step` (counted from 1)."""
    step = max(step, 1)
    peak, warmup = cfg.lr, cfg.warmup_steps
    if step <= warmup:
        return peak * step / warmup
    if cfg.schedule == "inverse_sqrt":
        return peak * math.sqrt(warmup / step)
    end = cfg.max_steps if end is None else end
    progress = min(1.0, (step - warmup) / max(end - warmup, 1))
    if cfg.schedule == "linear":
        decay = 1.0 - progress
    else:
        decay = 0.5 * (1.0 + math.cos(math.pi * progress))
    return cfg.min_lr + (peak - cfg.min_lr) * decay
