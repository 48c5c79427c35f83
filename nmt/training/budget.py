"""train.max_time: a wall-clock budget for training, and a learning-rate decay fitted into it.

At the end of the warm-up the run measures its own pace (seconds an update, seconds a
validation) and fixes the step at which the decay ends, so that a slower machine still reaches
a low learning rate before the budget is spent; `nmt.training.loop` asks here, before each update,
whether the time that is left still covers finishing (a last validation and the averaging).
"""

from __future__ import annotations

import logging
import math
import time
from typing import TYPE_CHECKING

from nmt.config import TrainConfig
from nmt.training import distributed
from nmt.training.validate import Validation

if TYPE_CHECKING:
    from nmt.training.run import Run, TrainState

log = logging.getLogger("nmt")


def finishing_seconds(last: Validation | None, cfg: TrainConfig) -> float:
    """What the run still has to do once it stops: a last validation, and the validation of
    the averaged checkpoint."""
    if last is None:
        return 0.0
    return last.seconds * (2 if cfg.average_last else 1)


def fits_schedule_to_time(cfg: TrainConfig, state: TrainState) -> bool:
    return (
        cfg.max_time is not None and cfg.schedule != "inverse_sqrt" and state.schedule_end is None
    )


def update_seconds(paces: list[tuple[int, float]], warmup_steps: int) -> float:
    """Seconds an update over the second half of the warm-up, as much of it as this session
    timed: the latest pace, without the first updates' start-up, and from this session's own
    updates when a run was resumed during its warm-up."""
    step, seconds = paces[-1]
    first = next((p for p in paces if p[0] >= warmup_steps // 2), paces[0])
    if first[0] >= step:
        first = paces[0]
    return (seconds - first[1]) / max(step - first[0], 1)


def warmup_advice(cfg: TrainConfig, step: int, elapsed: float, step_seconds: float) -> str | None:
    """A warning when, at this pace, the warm-up would use up more than half of train.max_time:
    the decay is fitted into what is left when the warm-up ends, so a slow model (Bahdanau
    attention at every site trains 3x slower than multi-head) would stop at or near the peak
    learning rate. Suggests a warm-up that ends a third of the way into the budget."""
    budget = cfg.max_seconds
    if budget is None or step_seconds <= 0:
        return None
    warmup_end = elapsed + step_seconds * (cfg.warmup_steps - step)
    if warmup_end <= budget / 2:
        return None
    suggested = max(50, int(budget / 3 / step_seconds) // 50 * 50)
    return (
        f"train.max_time {cfg.max_time}: at {step_seconds:.2f} s an update the "
        f"{cfg.warmup_steps}-update warm-up ends about {_clock(warmup_end)} into the "
        f"{_clock(budget)} budget, which leaves the learning-rate decay little or no time; "
        f"a train.warmup_steps of about {suggested} would end it a third of the way in"
    )


def _clock(seconds: float) -> str:
    minutes = round(seconds / 60)
    return f"{minutes // 60}h{minutes % 60:02d}m"


def fit_schedule_end(run: Run, started: float, step_seconds: float, last: Validation | None) -> int:
    """The step that train.max_time is expected to allow, estimated at the end of the warm-up
    from the time of an update (`step_seconds`) and of the last validation; the decay then
    ends there (or at max_steps, if sooner). Fixed once: later steps follow a known schedule,
    and a resumed run continues it exactly. Rank 0's estimate holds for every rank."""
    cfg, state = run.recipe.train, run.state
    valid_seconds = last.seconds if last is not None else 0.0
    if last is None:
        log.warning(
            "train.max_time: no validation before the warm-up ended, so the fitted end of the "
            "decay leaves validation time out and may lie past the budget; make "
            "train.warmup_steps at least train.valid_every"
        )
    remaining = cfg.max_seconds - (time.perf_counter() - started) - finishing_seconds(last, cfg)
    per_step = step_seconds + valid_seconds / cfg.valid_every
    # No update timed yet (log windows longer than the warm-up, no validation): no fit.
    end = state.step + max(0, math.floor(remaining / per_step)) if per_step > 0 else cfg.max_steps
    end = min(cfg.max_steps, end)
    end = int(distributed.broadcast_number(float(end), run.world, run.trainer.device))
    log.info(
        f"train.max_time {cfg.max_time}: the {cfg.schedule} decay will end at step {end} "
        f"({step_seconds:.2f} s an update, {valid_seconds:.0f} s a validation)"
    )
    return end
