"""Training: token batches, label-smoothed cross-entropy (nmt.loss), Adam with a warm-up and a
decay (nmt.schedule), gradient clipping and accumulation, mixed precision, validation by BLEU
(nmt.validate, which also keeps and averages the checkpoints), checkpoints, a wall-clock budget
(nmt.budget).

Read it top to bottom: `train()` sets up the process and holds the run folder's lock, `_loop()`
is the whole loop, and `Trainer` does one optimizer update.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import random
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from queue import Empty, Queue

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from nmt import budget, checkpoint, config, distributed, lock, runlog, schedule
from nmt.config import Recipe, TrainConfig
from nmt.data import Batch, ParallelDataset, Prepared, SubwordSampler, collate, token_batches
from nmt.device import Precision, autocast, resolve_device, resolve_precision, reuse_freed_memory
from nmt.distributed import World
from nmt.errors import NmtError
from nmt.loss import batch_loss
from nmt.model import build_model, count_parameters
from nmt.runlog import JsonlLog
from nmt.translate import Translator
from nmt.validate import Validation, average_and_select, validate_and_save

log = logging.getLogger("nmt")


@dataclass
class TrainState:
    """Where a run stands: everything besides weights, optimizer and RNG that a resume needs."""

    step: int = 0
    epoch: int = 0
    epoch_updates: int = 0  # updates done in the current epoch: the position in its order
    best_bleu: float = -1.0
    last_bleu: float = -1.0
    bad_validations: int = 0  # validations in a row without a better BLEU
    nonfinite_skipped: int = 0  # updates skipped for inf/NaN gradients
    oom_skipped: int = 0  # updates skipped for running out of GPU memory
    seconds: float = 0.0  # wall time of the run so far, summed over resumes (for max_time)
    schedule_end: int | None = None  # where the decay ends when fitted to max_time
    # The train.max_time (s) that stopped the run: it stops a little before the budget, keeping
    # time for its last validation and averaging, so `seconds` alone may not reach it.
    budget_spent: float | None = None


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


# -- one update -------------------------------------------------------------------------------


class _LossModule(torch.nn.Module):
    """`batch_loss` as a module, so DistributedDataParallel can wrap it (DDP synchronises the
    gradients of what runs through its own forward)."""

    def __init__(self, model: torch.nn.Module, label_smoothing: float) -> None:
        super().__init__()
        self.model = model
        self.label_smoothing = label_smoothing

    def forward(self, src, tgt_in, tgt_out, target_positions) -> torch.Tensor:  # noqa: ANN001
        batch = Batch(src, tgt_in, tgt_out, target_positions, 0)
        return batch_loss(self.model, batch, self.label_smoothing)


@dataclass
class Update:
    loss: torch.Tensor  # summed over the update's target tokens (stays on the device)
    tokens: int  # target tokens of the global batch
    skipped: str | None = None  # "nonfinite" or "oom" when the update was not applied
    # Some rank was interrupted (a signal) / found the time budget spent; without torchrun,
    # the flags passed in.
    interrupted: bool = False
    time_up: bool = False


class Trainer:
    """Optimizes a model one update at a time: forward and backward over the update's batches
    (gradients accumulated, synchronised once under DDP), clipping, the optimizer step."""

    def __init__(
        self,
        model: torch.nn.Module,
        cfg: TrainConfig,
        device: torch.device,
        precision: Precision = "fp32",
        world: World | None = None,
    ) -> None:
        self.model, self.cfg, self.device = model, cfg, device
        self.precision, self.world = precision, world or World()
        self.loss_module: torch.nn.Module = _LossModule(model, cfg.label_smoothing)
        if self.world.active:
            self.loss_module = torch.nn.parallel.DistributedDataParallel(
                self.loss_module,
                device_ids=[self.world.local_rank] if device.type == "cuda" else None,
            )
        if cfg.compile:
            # Batch shapes vary with sentence lengths: compile for dynamic shapes once rather
            # than recompiling for each new shape.
            self.loss_module = torch.compile(self.loss_module, dynamic=True)
        self.optimizer = torch.optim.Adam(
            model.parameters(),
            lr=cfg.lr,
            betas=cfg.betas,
            eps=cfg.eps,
            weight_decay=cfg.weight_decay,
            # One kernel for the whole update on a GPU instead of several per parameter.
            fused=device.type == "cuda",
        )
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")

    def update(
        self, group: list[Batch], lr: float, interrupted: bool = False, time_up: bool = False
    ) -> Update:
        """One optimizer step over `accum_steps` batches; the loss is per target token of all.

        `interrupted` and `time_up` are this rank's reasons to stop after this update; under
        torchrun they travel in the collective that sums the token count, so every rank learns
        them at the same update.
        """
        self.model.train()
        n_tokens = sum(b.n_tgt_tokens for b in group)
        if self.world.active:
            total_tokens, interrupts, times_up = distributed.all_sum(
                [float(n_tokens), float(interrupted), float(time_up)], self.world, self.device
            )
            n_tokens, interrupted, time_up = int(total_tokens), interrupts > 0, times_up > 0
        # DDP averages gradients over ranks; scaling by the world size makes that a sum.
        scale = self.world.size / n_tokens
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        total = torch.zeros((), device=self.device)
        try:
            for i, batch in enumerate(group):
                batch = batch.to(self.device)
                # Synchronise gradients once per update, on its last batch.
                sync = contextlib.nullcontext()
                if self.world.active and i < len(group) - 1:
                    sync = self.loss_module.no_sync()
                with sync:
                    with autocast(self.device, self.precision):
                        loss = self.loss_module(
                            batch.src, batch.tgt_in, batch.tgt_out, batch.target_positions
                        )
                    self.scaler.scale(loss * scale).backward()
                total += loss.detach()
        except torch.cuda.OutOfMemoryError:
            if self.world.active:
                raise  # the other ranks are waiting in a collective: skipping would hang them
            # A rare long batch ran out of GPU memory: drop it and go on.
            self.optimizer.zero_grad(set_to_none=True)
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            sizes = "+".join(
                f"{b.src.shape[0]}x{max(b.src.shape[1], b.tgt_in.shape[1])}" for b in group
            )
            log.warning(
                f"out of memory on a batch of {sizes} tokens; update skipped. "
                "Lower train.max_tokens if this recurs."
            )
            return Update(torch.zeros((), device=self.device), 0, "oom", interrupted, time_up)
        self.scaler.unscale_(self.optimizer)  # a no-op without fp16 loss scaling
        clip = self.cfg.clip_norm if self.cfg.clip_norm > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        if self.scaler.is_enabled():
            # fp16: the scaler skips the step itself when it found inf/NaN, and lowers its scale.
            scale_before = self.scaler.get_scale()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            skipped = self.scaler.get_scale() < scale_before
        else:
            # The one host synchronisation of an update: skipping must leave Adam untouched.
            skipped = not torch.isfinite(norm).item()
            if not skipped:
                self.optimizer.step()
        if skipped:
            log.warning("gradients are not finite; update skipped")
        self.optimizer.zero_grad(set_to_none=True)
        skip = "nonfinite" if skipped else None
        return Update(total, n_tokens, skip, interrupted, time_up)

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])


# -- setting up a run -------------------------------------------------------------------------


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


def open_prepared(recipe: Recipe) -> Prepared:
    prepared = Prepared.open(recipe.prepared_dir)
    m = prepared.manifest
    if (m["src_lang"], m["tgt_lang"]) != (recipe.data.src_lang, recipe.data.tgt_lang):
        raise NmtError(
            f"{recipe.prepared_dir} holds {m['src_lang']}-{m['tgt_lang']} data but the recipe "
            f"asks for {recipe.data.src_lang}-{recipe.data.tgt_lang}; "
            "rerun `nmt preprocess --force`"
        )
    return prepared


def initial_model(recipe: Recipe, prepared: Prepared) -> torch.nn.Module:
    """The untrained model of a recipe, initialised from its seed."""
    torch.manual_seed(recipe.seed)
    return build_model(
        recipe.model,
        len(prepared.src_tok),
        len(prepared.tgt_tok),
        prepared.manifest["joint"] and recipe.model.share_all_embeddings,
    )


@dataclass
class Run:
    """Everything one training run works with, built from its recipe (and last.pt)."""

    recipe: Recipe
    run_dir: Path
    prepared: Prepared
    train_data: ParallelDataset
    valid_data: ParallelDataset
    valid_src: list[str]
    valid_ref: list[str]
    trainer: Trainer
    translator: Translator  # decodes the model being trained, for validation BLEU
    state: TrainState
    world: World
    resumed: bool
    sampler: SubwordSampler | None = None  # train.subword_alpha: pieces sampled every epoch

    @classmethod
    def start(cls, recipe: Recipe, device: torch.device, world: World, force: bool) -> Run:
        run_dir = Path(recipe.run_dir)
        # A run folder with a checkpoint is resumed, unless --force starts it afresh.
        last = run_dir / "last.pt"
        saved = None
        if last.exists() and not force:
            saved = checkpoint.load(last)
            checkpoint.check_resumable(saved, recipe, last)
        prepared = open_prepared(recipe)
        precision = resolve_precision(recipe.train.precision, device)
        model = initial_model(recipe, prepared)
        if saved is None and recipe.train.init_from:
            _load_pretrained(model, recipe, prepared)
        model.to(device)
        trainer = Trainer(model, recipe.train, device, precision, world)
        decode = recipe.decode
        if recipe.train.valid_search == "greedy":
            decode = dataclasses.replace(decode, method="greedy")
        translator = Translator(
            model, prepared.src_tok, prepared.tgt_tok, decode, device, precision
        )
        state = TrainState()
        if saved is not None:
            model.load_state_dict(saved["model"])
            trainer.load_state_dict(saved)
            state = TrainState(**saved["train_state"])
            checkpoint.restore_rng(saved)
        if world.rank > 0:
            # Other ranks draw other dropout masks (rank 0 keeps the single-process stream).
            torch.manual_seed(recipe.seed * 1_000_003 + world.rank * 7919 + state.step)
        valid_src, valid_ref = prepared.raw_valid()
        train_data = prepared.dataset("train")
        sampler = None
        if recipe.train.subword_alpha > 0:
            sampler = SubwordSampler(
                train_data,
                prepared.src_tok,
                prepared.tgt_tok,
                recipe.train.subword_alpha,
                recipe.train.subword_nbest,
                recipe.filter.max_len,
            )
        return cls(
            recipe,
            run_dir,
            prepared,
            train_data,
            prepared.dataset("valid"),
            valid_src,
            valid_ref,
            trainer,
            translator,
            state,
            world,
            saved is not None,
            sampler,
        )

    @property
    def model(self) -> torch.nn.Module:
        return self.trainer.model

    def epoch_updates(self, epoch: int, skip: int = 0) -> Iterator[list[Batch]]:
        """This epoch's batches (reshuffled with the seed), grouped `accum_steps` per update;
        the first `skip` updates (done before a resume) are left out."""
        seed = self.recipe.seed * 100_003 + epoch
        data = self.train_data
        if self.sampler is not None:
            data = self.sampler.epoch(seed)
            stored = int(self.train_data.tgt.lengths.sum())
            log.debug(
                f"epoch {epoch}: {int(data.tgt.lengths.sum()) / stored:.3f}x the target pieces"
            )
        batches = token_batches(
            data.src.lengths, data.tgt.lengths, self.recipe.train.max_tokens, seed=seed
        )
        # Every rank computes the same order and takes its share of each global update; the
        # global batch of an update is `world size × accum_steps` batches.
        k = self.recipe.train.accum_steps
        n = self.world.size
        per_update = k * n
        pin = self.trainer.device.type == "cuda"

        def groups() -> Iterator[list[Batch]]:
            for i in range(skip * per_update, len(batches) - per_update + 1, per_update):
                mine = batches[i + self.world.rank * k : i + (self.world.rank + 1) * k]
                group = [collate(data, b) for b in mine]
                yield [b.pin_memory() for b in group] if pin else group

        if not pin:
            # On the CPU the producer thread would take a core from the update it is meant to
            # overlap with: measured 0.94x the target tokens/s with it (docs/BENCHMARKS.md).
            return groups()
        return _prefetched(groups(), depth=2)

    def save(self, name: str) -> None:
        checkpoint.save(
            checkpoint.training_state(
                self.model,
                self.recipe,
                self.prepared,
                self.state.step,
                dataclasses.asdict(self.state),
                self.trainer.state_dict(),
            ),
            self.run_dir / name,
        )

    def save_weights(self, name: str) -> None:
        """The weights alone: what averaging and translation need, at a fraction of the size."""
        checkpoint.save(
            checkpoint.model_state(self.model, self.recipe, self.prepared, self.state.step),
            self.run_dir / name,
        )


# Model settings that shape no weight: fine-tuning may change them.
_REGULARISATION = ("dropout", "attention_dropout", "activation_dropout")


def _load_pretrained(model: torch.nn.Module, recipe: Recipe, prepared: Prepared) -> None:
    """Fine-tuning: the weights of train.init_from, which must be the same architecture on the
    same vocabulary (its SentencePiece models are what `nmt preprocess` used)."""
    path = recipe.train.init_from
    state = checkpoint.load(path)
    theirs = config.from_dict(state["recipe"]).model
    mine = recipe.model
    for field in dataclasses.fields(mine):
        name = field.name
        if name not in _REGULARISATION and getattr(theirs, name) != getattr(mine, name):
            raise NmtError(
                f"train.init_from {path} has model.{name} = {getattr(theirs, name)!r}, the "
                f"recipe {getattr(mine, name)!r}; fine-tuning keeps the architecture: copy "
                "its model section (dropout may differ)"
            )
    if state["tokenizers"] != {"src": prepared.src_tok.proto, "tgt": prepared.tgt_tok.proto}:
        raise NmtError(
            f"train.init_from {path} has other SentencePiece models than {prepared.path}; "
            "rerun `nmt preprocess --force` with train.init_from set, so it takes the "
            "checkpoint's"
        )
    model.load_state_dict(state["model"])
    log.info(f"fine-tuning from {path} (step {state['step']}): fresh optimizer and schedule")


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
        self.loss = torch.zeros((), device=device)  # summed on the device: no sync per update
        self.tokens = 0
        self.start = time.perf_counter()
        self.seconds = 0.0  # of the windows closed so far
        self.all_tokens = 0

    def add(self, update: Update) -> None:
        self.loss += update.loss
        self.tokens += update.tokens

    def close(self) -> tuple[float, int, float]:
        """Ends the window and starts the next: its (summed loss, tokens, seconds)."""
        elapsed = time.perf_counter() - self.start
        self.seconds += elapsed
        self.all_tokens += self.tokens
        closed = (self.loss.item(), self.tokens, elapsed)
        self.loss.zero_()
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
    window_loss, window_tokens, elapsed = window.close()
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


def _prefetched(items: Iterator, depth: int) -> Iterator:
    """`items`, produced `depth` ahead on a background thread: the next batches are collated
    (and pinned) while the device computes the current update. Order and content are those
    of `items`; an exception in the producer is raised in the consumer."""
    queue: Queue = Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                queue.put(item)
        except BaseException as e:  # handed to the consumer, which raises it
            queue.put(_Failure(e))
        queue.put(done)

    thread = threading.Thread(target=produce, name="nmt-batches", daemon=True)
    thread.start()
    try:
        while (item := queue.get()) is not done:
            if isinstance(item, _Failure):
                raise item.error
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            with contextlib.suppress(Empty):
                queue.get_nowait()
            thread.join(timeout=0.01)


@dataclass
class _Failure:
    error: BaseException


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
