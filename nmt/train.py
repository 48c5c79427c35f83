"""The training loop: token batches, label-smoothed cross-entropy, Adam with inverse-square-root
warmup, gradient clipping and accumulation, mixed precision, validation by BLEU, checkpoints.

Read it top to bottom: `Trainer.train()` is the whole loop.

    lr(step) = lr · min(step / warmup, √(warmup / step))
    loss     = Σ label-smoothed CE over the target tokens of an update / number of those tokens
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import random
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from nmt import checkpoint, config, distributed, lock
from nmt.config import Recipe
from nmt.data import Batch, ParallelDataset, Prepared, collate, token_batches
from nmt.device import autocast, resolve_device, resolve_precision
from nmt.errors import NmtError
from nmt.model import Seq2Seq, build_model, count_parameters
from nmt.score import score_lines
from nmt.translate import Translator

log = logging.getLogger("nmt")


def inverse_sqrt_lr(step: int, lr: float, warmup: int) -> float:
    step = max(step, 1)
    return lr * min(step / warmup, math.sqrt(warmup / step))


def batch_loss(model: Seq2Seq, batch: Batch, label_smoothing: float = 0.0) -> torch.Tensor:
    """Summed (label-smoothed) cross-entropy over the batch's non-padding target tokens.

    Only real target positions are projected onto the vocabulary: the projection and softmax
    are the largest single cost of a step, and padding would waste a share of them.
    """
    memory, src_pad_mask = model.encode(batch.src)
    states, _ = model.decode_features(batch.tgt_in, memory, src_pad_mask)
    states = states.flatten(0, 1).index_select(0, batch.target_positions)
    logits = model.project(states).float()
    target = batch.tgt_out.flatten().index_select(0, batch.target_positions)
    return F.cross_entropy(logits, target, label_smoothing=label_smoothing, reduction="sum")


class _BatchLoss(torch.nn.Module):
    """`batch_loss` as a module, so DistributedDataParallel can wrap it (DDP synchronises the
    gradients of what runs through its own forward)."""

    def __init__(self, model: Seq2Seq, label_smoothing: float) -> None:
        super().__init__()
        self.model = model
        self.label_smoothing = label_smoothing

    def forward(self, src, tgt_in, tgt_out, target_positions) -> torch.Tensor:  # noqa: ANN001
        batch = Batch(src, tgt_in, tgt_out, target_positions, 0)
        return batch_loss(self.model, batch, self.label_smoothing)


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


class JsonlLog:
    """Appends one JSON object per line; flushed so a crash loses nothing already logged."""

    def __init__(self, path: Path | None) -> None:
        # No path (ranks other than 0): records are dropped.
        self.file = open(path, "a", encoding="utf-8") if path else None  # noqa: SIM115

    def write(self, **record: object) -> None:
        if self.file:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()

    def close(self) -> None:
        if self.file:
            self.file.close()


class Trainer:
    def __init__(self, recipe: Recipe, force: bool = False, progress: bool = True) -> None:
        self.recipe = recipe
        self.cfg = recipe.train
        self.run_dir = Path(recipe.run_dir)
        self.show_progress = progress
        # A run folder with a checkpoint is resumed, unless --force starts it afresh.
        last = self.run_dir / "last.pt"
        self.resume_from: dict | None = None
        if last.exists() and not force:
            self.resume_from = checkpoint.load(last)
            _check_resumable(self.resume_from, recipe, last)
        self.prepared = Prepared.open(recipe.prepared_dir)
        m = self.prepared.manifest
        if (m["src_lang"], m["tgt_lang"]) != (recipe.data.src_lang, recipe.data.tgt_lang):
            raise NmtError(
                f"{recipe.prepared_dir} holds {m['src_lang']}-{m['tgt_lang']} data but the recipe "
                f"asks for {recipe.data.src_lang}-{recipe.data.tgt_lang}; "
                "rerun `nmt preprocess --force`"
            )
        self.train_data: ParallelDataset = self.prepared.dataset("train")
        self.valid_data: ParallelDataset = self.prepared.dataset("valid")
        self.valid_src, self.valid_ref = self.prepared.raw_valid()

        random.seed(recipe.seed)
        torch.manual_seed(recipe.seed)
        if self.cfg.threads:
            torch.set_num_threads(self.cfg.threads)
        self.device = resolve_device(self.cfg.device)
        # Under torchrun: one process per GPU (or CPU process), rank 0 writes everything.
        self.world = distributed.setup(self.device.type)
        if self.device.type == "cuda" and self.world.active:
            self.device = torch.device("cuda", self.world.local_rank)
        self.precision = resolve_precision(self.cfg.precision, self.device)
        src_tok, tgt_tok = self.prepared.src_tok, self.prepared.tgt_tok
        self.model = build_model(recipe.model, len(src_tok), len(tgt_tok), m["joint"]).to(
            self.device
        )
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = self.cfg.tf32
            torch.backends.cudnn.allow_tf32 = self.cfg.tf32
        self.loss_module: torch.nn.Module = _BatchLoss(self.model, self.cfg.label_smoothing)
        if self.world.active:
            self.loss_module = torch.nn.parallel.DistributedDataParallel(
                self.loss_module,
                device_ids=[self.world.local_rank] if self.device.type == "cuda" else None,
            )
        if self.cfg.compile:
            # Batch shapes vary with sentence lengths: compile for dynamic shapes once rather
            # than recompiling for each new shape.
            self.loss_module = torch.compile(self.loss_module, dynamic=True)
        self.optimizer = torch.optim.Adam(
            self.model.parameters(),
            lr=self.cfg.lr,
            betas=self.cfg.betas,
            eps=self.cfg.eps,
            weight_decay=self.cfg.weight_decay,
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        valid_decode = recipe.decode
        if self.cfg.valid_search == "greedy":
            valid_decode = dataclasses.replace(recipe.decode, method="greedy")
        self.translator = Translator(
            self.model, src_tok, tgt_tok, valid_decode, self.device, self.precision
        )
        self.step = 0
        self.epoch = 0
        self.epoch_updates = 0  # updates done in the current epoch: the position in its order
        self.best_bleu = -1.0
        self.last_bleu = -1.0
        self.bad_validations = 0
        self.interrupted: str | None = None  # the signal that asked us to stop
        self.nonfinite_skipped = 0  # updates skipped for inf/NaN gradients
        self.oom_skipped = 0  # updates skipped for running out of GPU memory
        if self.resume_from is not None:
            self._restore(self.resume_from)
        if self.world.rank > 0:
            # Other ranks draw other dropout masks (rank 0 keeps the single-process stream).
            torch.manual_seed(recipe.seed * 1_000_003 + self.world.rank * 7919 + self.step)

    # -- the loop ---------------------------------------------------------------------------

    def train(self) -> TrainResult:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        resuming = self.resume_from is not None
        self.resume_from = None  # its tensors are loaded; free the copy
        main = self.world.is_main
        if main:
            config.dump(self.recipe, self.run_dir / "recipe.yaml")
            if not resuming:
                (self.run_dir / "log.jsonl").unlink(missing_ok=True)
        self.log = JsonlLog(self.run_dir / "log.jsonl" if main else None)
        if self.world.active:
            log.info(f"rank {self.world.rank} of {self.world.size}, device {self.device}")
        n_params = count_parameters(self.model)
        log.info(
            f"model: {n_params / 1e6:.2f}M parameters; {len(self.train_data)} training pairs; "
            f"device {self.device}, precision {self.precision}"
            + (f"; resuming at step {self.step}" if resuming else "")
        )
        self.log.write(
            kind="resume" if resuming else "start",
            step=self.step,
            parameters=n_params,
            device=str(self.device),
            precision=self.precision,
            train_pairs=len(self.train_data),
        )
        start = time.perf_counter()
        train_seconds, train_tokens = 0.0, 0
        stopped_early = False
        with self._progress() as bar, _StopOnSignal(self):
            task = bar.add_task("training", total=self.cfg.max_steps, info="")
            bar.update(task, completed=self.step)
            window_loss = torch.zeros((), device=self.device)
            window_tokens, window_start = 0, time.perf_counter()
            # A resumed run first finishes the epoch it was in, from where it stopped.
            continue_epoch = resuming and self.epoch > 0
            while self.step < self.cfg.max_steps:
                if not continue_epoch:
                    if self.epoch >= self.cfg.max_epochs:
                        break
                    self.epoch += 1
                    self.epoch_updates = 0
                continue_epoch = False
                for group in self._updates(self.epoch, skip=self.epoch_updates):
                    loss_sum, n_tokens = self._update(group)
                    self.step += 1
                    self.epoch_updates += 1
                    window_loss += loss_sum
                    window_tokens += n_tokens
                    if self.step % self.cfg.log_every == 0:
                        elapsed = time.perf_counter() - window_start
                        train_seconds += elapsed
                        train_tokens += window_tokens
                        [loss_total] = distributed.all_sum(
                            [window_loss.item()], self.world, self.device
                        )
                        record = {
                            "step": self.step,
                            "epoch": self.epoch,
                            "loss": loss_total / max(window_tokens, 1),
                            "lr": self.optimizer.param_groups[0]["lr"],
                            "tgt_tokens_per_s": window_tokens / elapsed,
                            "skipped_nonfinite": self.nonfinite_skipped,
                            "skipped_oom": self.oom_skipped,
                        }
                        self.log.write(kind="train", **record)
                        bar.update(
                            task,
                            info=(
                                f"epoch {self.epoch} loss {record['loss']:.3f} "
                                f"lr {record['lr']:.2e} {record['tgt_tokens_per_s']:.0f} tok/s"
                            ),
                        )
                        window_loss.zero_()
                        window_tokens, window_start = 0, time.perf_counter()
                    bar.update(task, completed=self.step)
                    if self.step % self.cfg.valid_every == 0:
                        pause = time.perf_counter()
                        stopped_early = self._validate()
                        window_start += time.perf_counter() - pause  # validation is not training
                    if self.interrupted:
                        if main:
                            self._save("last.pt")
                        self.log.write(kind="interrupted", step=self.step, signal=self.interrupted)
                        break
                    if stopped_early or self.step >= self.cfg.max_steps:
                        break
                if stopped_early or self.interrupted:
                    break
            if window_tokens:
                train_seconds += time.perf_counter() - window_start
                train_tokens += window_tokens
            if self.step % self.cfg.valid_every != 0 and not self.interrupted:
                self._validate()
        result = TrainResult(
            steps=self.step,
            epochs=self.epoch,
            best_bleu=self.best_bleu,
            last_bleu=self.last_bleu,
            seconds=time.perf_counter() - start,
            tokens_per_second=train_tokens / train_seconds if train_seconds else 0.0,
            stopped_early=stopped_early,
            interrupted=self.interrupted,
        )
        self.log.write(kind="end", **vars(result))
        self.log.close()
        distributed.teardown(self.world)
        return result

    def _updates(self, epoch: int, skip: int = 0) -> Iterator[list[Batch]]:
        """This epoch's batches (reshuffled with the seed), grouped `accum_steps` per update;
        the first `skip` updates (done before a resume) are left out."""
        batches = token_batches(
            self.train_data.src.lengths,
            self.train_data.tgt.lengths,
            self.cfg.max_tokens,
            seed=self.recipe.seed * 100_003 + epoch,
        )
        # Every rank computes the same order and takes its share of each global update; the
        # global batch of an update is `world size × accum_steps` batches.
        k = self.cfg.accum_steps
        n = self.world.size
        per_update = k * n
        for i in range(skip * per_update, len(batches) - per_update + 1, per_update):
            mine = batches[i + self.world.rank * k : i + (self.world.rank + 1) * k]
            yield [collate(self.train_data, b) for b in mine]

    def _update(self, group: list[Batch]) -> tuple[torch.Tensor, int]:
        """One optimizer step over `accum_steps` batches; the loss is per target token of all."""
        self.model.train()
        n_tokens = sum(b.n_tgt_tokens for b in group)
        if self.world.active:
            # The loss is normalised by the target tokens of the global batch; the same
            # collective tells every rank whether any of them was asked to stop.
            n_tokens, stop = distributed.all_sum(
                [float(n_tokens), float(self.interrupted is not None)], self.world, self.device
            )
            n_tokens = int(n_tokens)
            if stop and not self.interrupted:
                self.interrupted = "SIGTERM"
        # DDP averages gradients over ranks; scaling by the world size makes that a sum.
        scale = self.world.size / n_tokens
        lr = inverse_sqrt_lr(self.step + 1, self.cfg.lr, self.cfg.warmup_steps)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        total = torch.zeros((), device=self.device)
        try:
            for i, batch in enumerate(group):
                batch = batch.to(self.device)
                last = i == len(group) - 1
                # Synchronise gradients once per update, on its last batch.
                sync = contextlib.nullcontext()
                if self.world.active and not last:
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
            self.oom_skipped += 1
            sizes = "+".join(
                f"{b.src.shape[0]}x{max(b.src.shape[1], b.tgt_in.shape[1])}" for b in group
            )
            log.warning(
                f"step {self.step + 1}: out of memory on a batch of {sizes} tokens; skipped "
                f"({self.oom_skipped} so far). Lower train.max_tokens if this recurs."
            )
            return torch.zeros((), device=self.device), 0
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
            skipped = not torch.isfinite(norm).item()
            if not skipped:
                self.optimizer.step()
        if skipped:
            self.nonfinite_skipped += 1
            log.warning(
                f"step {self.step + 1}: gradients are not finite; update skipped "
                f"({self.nonfinite_skipped} so far)"
            )
        self.optimizer.zero_grad(set_to_none=True)
        return total, n_tokens

    # -- validation and checkpoints ---------------------------------------------------------

    @torch.no_grad()
    def valid_loss(self) -> float:
        """Mean negative log-likelihood per target token on the validation set (no smoothing)."""
        self.model.eval()
        data = self.valid_data
        total, tokens = 0.0, 0
        for indices in token_batches(data.src.lengths, data.tgt.lengths, self.cfg.max_tokens):
            batch = collate(data, indices).to(self.device)
            with autocast(self.device, self.precision):
                total += batch_loss(self.model, batch).item()
            tokens += batch.n_tgt_tokens
        return total / max(tokens, 1)

    def _validate(self) -> bool:
        """Rank 0 validates and saves; every rank learns whether to stop early."""
        stop = self._validate_and_save() if self.world.is_main else False
        return distributed.broadcast_flag(stop, self.world, self.device)

    def _validate_and_save(self) -> bool:
        """Loss, perplexity and BLEU on the validation set; saves checkpoints.

        Returns True when `patience` validations in a row brought no better BLEU.
        """
        started = time.perf_counter()
        nll = self.valid_loss()
        self.model.eval()
        hyps = self.translator.translate(self.valid_src)
        bleu = score_lines(hyps, [self.valid_ref], ["bleu"])[0].score
        (self.run_dir / "valid.hyp").write_text("".join(h + "\n" for h in hyps), encoding="utf-8")
        improved = bleu > self.best_bleu
        self.last_bleu = bleu
        if improved:
            self.best_bleu = bleu
            self.bad_validations = 0
        else:
            self.bad_validations += 1
        self._save("last.pt")
        if improved:
            self._save("best.pt")
        if self.cfg.keep_last:
            # The weights alone: what averaging needs, at a fraction of last.pt's size.
            checkpoint.save(
                self._state(with_training_state=False), self.run_dir / f"step_{self.step}.pt"
            )
            for old in checkpoint.step_checkpoints(self.run_dir)[: -self.cfg.keep_last]:
                old.unlink()
        record = {
            "step": self.step,
            "epoch": self.epoch,
            "valid_loss": nll,
            "valid_ppl": math.exp(min(nll, 50.0)),
            "valid_bleu": bleu,
            "best_bleu": self.best_bleu,
            "seconds": time.perf_counter() - started,
        }
        self.log.write(kind="valid", **record)
        log.info(
            f"step {self.step} epoch {self.epoch}: valid loss {nll:.3f} ppl "
            f"{record['valid_ppl']:.2f} BLEU {bleu:.2f} (best {self.best_bleu:.2f})"
            + (" *" if improved else "")
        )
        patience = self.cfg.patience
        return patience > 0 and self.bad_validations >= patience

    def _save(self, name: str) -> None:
        checkpoint.save(self._state(), self.run_dir / name)

    def _state(self, with_training_state: bool = True) -> dict:
        state = {
            "model": self.model.state_dict(),
            "recipe": config.to_dict(self.recipe),
            "tokenizers": {
                "src": self.prepared.src_tok.proto,
                "tgt": self.prepared.tgt_tok.proto,
            },
            "step": self.step,
        }
        if not with_training_state:
            return state
        return {
            **state,
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "epoch_updates": self.epoch_updates,
            "best_bleu": self.best_bleu,
            "last_bleu": self.last_bleu,
            "bad_validations": self.bad_validations,
            "skipped": [self.nonfinite_skipped, self.oom_skipped],
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            },
        }

    def _restore(self, state: dict) -> None:
        """Continue exactly where `state` (a last.pt) stopped: weights, optimizer, gradient
        scaler, counters, RNG states and the position in the epoch's batch order."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.step, self.epoch = state["step"], state["epoch"]
        self.epoch_updates = state.get("epoch_updates", 0)
        self.best_bleu = state["best_bleu"]
        self.last_bleu = state.get("last_bleu", self.best_bleu)
        self.bad_validations = state.get("bad_validations", 0)
        self.nonfinite_skipped, self.oom_skipped = state.get("skipped", [0, 0])
        rng = state.get("rng", {})
        if "torch" in rng:
            torch.set_rng_state(rng["torch"])
        if rng.get("cuda") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])

    def _progress(self) -> Progress:
        return Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[info]}"),
            console=Console(stderr=True),
            disable=not self.show_progress,
        )


# Sections that define the model and its data: a resumed run must not change them.
_FIXED_SECTIONS = ("data", "tokenizer", "filter", "model", "seed")


def _check_resumable(state: dict, recipe: Recipe, path: Path) -> None:
    saved = state["recipe"]
    current = config.to_dict(recipe)
    for section in _FIXED_SECTIONS:
        if saved.get(section) != current[section]:
            if isinstance(current[section], dict):
                keys = [
                    k
                    for k in current[section]
                    if saved.get(section, {}).get(k) != current[section][k]
                ]
                what = ", ".join(f"{section}.{k}" for k in keys) or section
            else:
                what = section
            raise NmtError(
                f"{path} was trained with a different {what}; resume with the recipe it was "
                "trained with, or use --force to train from scratch"
            )
    if "optimizer" not in state:
        raise NmtError(f"{path} has no optimizer state to resume from; use --force to start again")
    if state["step"] >= recipe.train.max_steps:
        raise NmtError(
            f"{path.parent} is already trained to step {state['step']} (train.max_steps="
            f"{recipe.train.max_steps}); raise train.max_steps to continue, or use --force to "
            "train from scratch"
        )
    patience = recipe.train.patience
    if patience and state.get("bad_validations", 0) >= patience:
        raise NmtError(
            f"{path.parent} stopped early: {patience} validations without a better BLEU "
            "(train.patience); raise train.patience to continue, or use --force"
        )


class _StopOnSignal:
    """SIGINT and SIGTERM ask the trainer to stop after the current update (it then saves
    last.pt); a second signal stops at once, as usual."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer
        self.previous: dict[int, object] = {}

    def _handler(self, signum: int, frame: object) -> None:
        if self.trainer.interrupted:
            signal.signal(signum, self.previous.get(signum, signal.SIG_DFL))
            signal.raise_signal(signum)
            return
        self.trainer.interrupted = signal.Signals(signum).name
        log.warning(f"{self.trainer.interrupted}: saving last.pt after this update, then stopping")

    def __enter__(self) -> _StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self.previous[signum] = signal.signal(signum, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)


def train(recipe: Recipe, force: bool = False, progress: bool = True) -> TrainResult:
    """Train (or resume) the recipe's run, holding its folder's lock for the whole run (rank 0
    alone under torchrun: the other ranks write nothing there)."""
    is_main = int(os.environ.get("RANK", "0")) == 0
    held = lock.hold(Path(recipe.run_dir), "train") if is_main else contextlib.nullcontext()
    with held:
        return Trainer(recipe, force=force, progress=progress).train()
