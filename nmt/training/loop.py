"""Training: the loop over epochs and updates of a run (nmt.training.run) — one optimizer update at a
time (nmt.training.trainer), with the learning rate of nmt.training.schedule, validation by BLEU (nmt.training.validate,
which also keeps and averages the checkpoints), a log record every few updates, a wall-clock
budget (nmt.training.budget), and a clean stop on SIGINT or SIGTERM that saves last.pt.

Read it top to bottom: `train()` sets up the process and holds the run folder's lock, and
`_loop()` is the whole loop.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from nmt import checkpoint, config
from nmt.config import Recipe
from nmt.models.base import count_parameters
from nmt.training import budget, distributed, runlog, schedule
from nmt.training.run import Run
from nmt.training.runlog import JsonlLog
from nmt.training.trainer import Update
from nmt.training.validate import Validation, average_and_select, validate_and_save
from nmt.utils import lock
from nmt.utils.device import resolve_device, reuse_freed_memory

log = logging.getLogger("nmt")


@dataclass
class TrainResult:
    steps: int
    epochs: int
    best_bleu: float
    last_bleu: float
    seconds: float
    tokens_per_second: float  # target tokens, training steps only (validation excluded)
    stopped_early: bool
    interrupted: str | None = None  # SIGINT or SIGTERM when a signal stopped the run
    out_of_time: bool = False  # stopped by train.max_time
    averaged_bleu: float | None = None  # validation BLEU of averaged.pt (train.average_last)
    selected: str | None = None  # the checkpoint `nmt translate RUN_DIR` uses


def train(recipe: Recipe, force: bool = False, progress: bool = True) -> TrainResult:
    """Train (or resume) the recipe's run.

    The process-wide settings are made here, once: the run folder's lock (rank 0 alone under
    torchrun: the other ranks write nothing there), the seeds, torch's thread count, the C
    library's reuse of freed memory, the process group and TF32.
    """
    device = resolve_device(recipe.train.device)
    is_main = int(os.environ.get("RANK", "0")) == 0
    held = lock.hold(Path(recipe.run_dir), "train") if is_main else contextlib.nullcontext()
    with held:
        random.seed(recipe.seed)
        torch.manual_seed(recipe.seed)
        if recipe.train.threads:
            torch.set_num_threads(recipe.train.threads)
        if device.type == "cpu":
            reuse_freed_memory()
        # Under torchrun: one process per GPU (or CPU process), rank 0 writes everything.
        world = distributed.setup(device.type)
        if device.type == "cuda":
            if world.active:
                device = torch.device("cuda", world.local_rank)
            torch.backends.cuda.matmul.allow_tf32 = recipe.train.tf32
            torch.backends.cudnn.allow_tf32 = recipe.train.tf32
        try:
            return _loop(Run.start(recipe, device, world, force), progress)
        finally:
            distributed.teardown(world)


# -- the loop ---------------------------------------------------------------------------------


def _open_run(run: Run) -> JsonlLog:
    """The run folder with its recipe, and its event log opened with a start (or resume) record."""
    cfg, state, world = run.recipe.train, run.state, run.world
    main = world.is_main
    run.run_dir.mkdir(parents=True, exist_ok=True)
    if main:
        config.dump(run.recipe, run.run_dir / "recipe.yaml")
        if not run.resumed:
            _remove_old_results(run.run_dir)
    events = JsonlLog(
        run.run_dir / runlog.LOG if main else None,
        run.run_dir / "tensorboard" if main and cfg.tensorboard else None,
    )
    if world.active:
        log.info(f"rank {world.rank} of {world.size}, device {run.trainer.device}")
    n_params = count_parameters(run.model)
    log.info(
        f"model: {n_params / 1e6:.2f}M parameters; {len(run.train_data)} training pairs; "
        f"device {run.trainer.device}, precision {run.trainer.precision}"
        + (f"; subword sampling, alpha {cfg.subword_alpha}" if run.sampler else "")
        + (f"; resuming at step {state.step}" if run.resumed else "")
    )
    events.write(
        kind="resume" if run.resumed else "start",
        step=state.step,
        parameters=n_params,
        device=str(run.trainer.device),
        precision=run.trainer.precision,
        train_pairs=len(run.train_data),
    )
    return events


class _Window:
    """The loss and target tokens of the updates since the last log record, and this session's
    training seconds and tokens, for tokens/s (validation time is not training time)."""

    def __init__(self, device: torch.device) -> None:
        # Summed on the device, read once per window: the loss, the updates Adam skipped for
        # non-finite gradients, and the gradient norms (and how many) of the applied ones.
        self.sums = torch.zeros(4, device=device)
        self.tokens = 0
        self.start = time.perf_counter()
        self.seconds = 0.0  # of the windows closed so far
        self.all_tokens = 0

    def add(self, update: Update) -> None:
        if update.nonfinite is None:  # fp16, or a skipped batch: the loss alone
            self.sums[0] += update.loss
        else:  # one addition of a stacked vector: fewer kernels than four indexed ones
            applied = 1 - update.nonfinite
            self.sums += torch.stack([update.loss, update.nonfinite, update.grad_norm, applied])
        self.tokens += update.tokens

    def close(self) -> tuple[float, int, float, int, float | None]:
        """Ends the window and starts the next: its (summed loss, tokens, seconds, updates
        skipped on the device, mean gradient norm or None)."""
        elapsed = time.perf_counter() - self.start
        self.seconds += elapsed
        self.all_tokens += self.tokens
        loss, skipped, norms, counted = self.sums.tolist()  # the window's one synchronisation
        closed = (loss, self.tokens, elapsed, int(skipped), norms / counted if counted else None)
        self.sums.zero_()
        self.tokens, self.start = 0, time.perf_counter()
        return closed

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        pause = time.perf_counter()
        yield
        self.start += time.perf_counter() - pause


def _log_window(
    run: Run,
    window: _Window,
    lr: float,
    paces: list[tuple[int, float]],
    started: float,
    events: JsonlLog,
) -> dict:
    """Closes the log window and writes its record (the loss summed over every rank). During
    warm-up the window's pace joins `paces`, which train.max_time's fit extrapolates; at the
    second window it also warns if the warm-up cannot end inside the budget."""
    cfg, state = run.recipe.train, run.state
    window_loss, window_tokens, elapsed, skipped, grad_norm = window.close()
    if skipped:
        state.nonfinite_skipped += skipped
        log.warning(f"gradients not finite: {skipped} update(s) of this log window skipped")
    if state.step <= cfg.warmup_steps:
        paces.append((state.step, window.seconds))
        if len(paces) == 3 and budget.fits_schedule_to_time(cfg, state):
            # The second log window's pace: the first has the start-up in it.
            pace = budget.update_seconds(paces[1:], 0)
            so_far = time.perf_counter() - started
            advice = budget.warmup_advice(cfg, state.step, so_far, pace)
            if advice:
                log.warning(advice)
    [loss_total] = distributed.all_sum([window_loss], run.world, run.trainer.device)
    record = {
        "step": state.step,
        "epoch": state.epoch,
        "loss": loss_total / max(window_tokens, 1),
        "lr": lr,
        "tgt_tokens_per_s": window_tokens / elapsed,
        "skipped_nonfinite": state.nonfinite_skipped,
        "skipped_oom": state.oom_skipped,
    }
    if grad_norm is not None:
        record["grad_norm"] = grad_norm  # mean over the window, before clipping
    events.write(kind="train", **record)
    return record


def _loop(run: Run, show_progress: bool) -> TrainResult:
    cfg, state, world = run.recipe.train, run.state, run.world
    main = world.is_main
    events = _open_run(run)
    max_seconds = cfg.max_seconds
    started = time.perf_counter() - state.seconds  # the clock of the whole run, over resumes
    # (step, training seconds) at each log window of this session's warm-up: the pace that
    # train.max_time's fit extrapolates.
    paces = [(state.step, 0.0)]
    last_validation: Validation | None = None
    stopped_early = out_of_time = False
    interrupted: list[str] = []  # the signal that asked us to stop, set by _StopOnSignal

    def validate_now() -> bool:
        nonlocal last_validation
        state.seconds = time.perf_counter() - started
        stop = False
        if main:
            last_validation = validate_and_save(run, events)
            stop = cfg.patience > 0 and state.bad_validations >= cfg.patience
        return distributed.broadcast_flag(stop, world, run.trainer.device)

    with _progress(show_progress) as bar, _StopOnSignal(interrupted):
        task = bar.add_task("training", total=state.schedule_end or cfg.max_steps, info="")
        bar.update(task, completed=state.step)
        window = _Window(run.trainer.device)
        # A resumed run first finishes the epoch it was in, from where it stopped.
        continue_epoch = run.resumed and state.epoch > 0
        stop = False
        while state.step < cfg.max_steps and not stop:
            if not continue_epoch:
                if state.epoch >= cfg.max_epochs:
                    break
                state.epoch += 1
                state.epoch_updates = 0
            continue_epoch = False
            for group in run.epoch_updates(state.epoch, skip=state.epoch_updates):
                reserve = budget.finishing_seconds(last_validation, cfg)
                time_up = max_seconds is not None and (
                    time.perf_counter() - started + reserve >= max_seconds
                )
                lr = schedule.learning_rate(state.step + 1, cfg, state.schedule_end)
                update = run.trainer.update(group, lr, bool(interrupted), time_up)
                if update.time_up and not interrupted:
                    state.budget_spent = max_seconds  # saved with the checkpoints from here on
                if update.interrupted and not interrupted:
                    interrupted.append("SIGTERM")  # another rank was stopped by a signal
                state.step += 1
                state.epoch_updates += 1
                if update.skipped == "nonfinite":
                    state.nonfinite_skipped += 1
                elif update.skipped == "oom":
                    state.oom_skipped += 1
                window.add(update)
                if state.step % cfg.log_every == 0:
                    record = _log_window(run, window, lr, paces, started, events)
                    bar.update(
                        task,
                        info=(
                            f"epoch {state.epoch} loss {record['loss']:.3f} "
                            f"lr {record['lr']:.2e} {record['tgt_tokens_per_s']:.0f} tok/s"
                        ),
                    )
                bar.update(task, completed=state.step)
                if state.step % cfg.valid_every == 0:
                    with window.paused():
                        stopped_early = validate_now()
                if state.step == cfg.warmup_steps and budget.fits_schedule_to_time(cfg, state):
                    state.schedule_end = budget.fit_schedule_end(
                        run,
                        started,
                        budget.update_seconds(paces, cfg.warmup_steps),
                        last_validation,
                    )
                    bar.update(task, total=state.schedule_end)
                    events.write(kind="schedule", step=state.step, end=state.schedule_end)
                if interrupted:
                    state.seconds = time.perf_counter() - started
                    if main:
                        run.save("last.pt")
                    events.write(kind="interrupted", step=state.step, signal=interrupted[0])
                out_of_time = update.time_up and not interrupted
                stop = bool(interrupted) or stopped_early or out_of_time
                if stop or state.step >= cfg.max_steps:
                    break
        if window.tokens:
            window.close()
        if out_of_time:
            log.info(f"train.max_time ({cfg.max_time}) reached at step {state.step}")
        if state.step % cfg.valid_every != 0 and not interrupted:
            validate_now()
    averaged_bleu = selected = None
    if main and not interrupted and cfg.average_last:
        averaged_bleu, selected = average_and_select(run, events)
    state.seconds = time.perf_counter() - started
    result = TrainResult(
        steps=state.step,
        epochs=state.epoch,
        best_bleu=state.best_bleu,
        last_bleu=state.last_bleu,
        seconds=state.seconds,
        tokens_per_second=window.all_tokens / window.seconds if window.seconds else 0.0,
        stopped_early=stopped_early,
        interrupted=interrupted[0] if interrupted else None,
        out_of_time=out_of_time,
        averaged_bleu=averaged_bleu,
        selected=selected,
    )
    events.write(kind="end", **vars(result))
    events.close()
    return result


def _remove_old_results(run_dir: Path) -> None:
    """A run started afresh (or with --force) must not average or select another run's files."""
    for old in checkpoint.step_checkpoints(run_dir):
        old.unlink()
    for name in (runlog.LOG, checkpoint.AVERAGED, checkpoint.SELECTED):
        (run_dir / name).unlink(missing_ok=True)


def _progress(show: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[info]}"),
        console=Console(stderr=True),
        disable=not show,
    )


class _StopOnSignal:
    """SIGINT and SIGTERM ask the loop to stop after the current update (it then saves
    last.pt); a second signal stops at once, as usual. The signal's name goes into `flag`."""

    def __init__(self, flag: list[str]) -> None:
        self.flag = flag
        self.previous: dict[int, object] = {}

    def _handler(self, signum: int, frame: object) -> None:
        if self.flag:
            signal.signal(signum, self.previous.get(signum, signal.SIG_DFL))
            signal.raise_signal(signum)
            return
        self.flag.append(signal.Signals(signum).name)
        log.warning(f"{self.flag[0]}: saving last.pt after this update, then stopping")

    def __enter__(self) -> _StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self.previous[signum] = signal.signal(signum, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
