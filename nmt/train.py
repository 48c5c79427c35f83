"""The training loop: token batches, label-smoothed cross-entropy, Adam with inverse-square-root
warmup, gradient clipping and accumulation, mixed precision, validation by BLEU, checkpoints.

Read it top to bottom: `Trainer.train()` is the whole loop.

    lr(step) = lr · min(step / warmup, √(warmup / step))
    loss     = Σ label-smoothed CE over the target tokens of an update / number of those tokens
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from nmt import checkpoint, config
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


@dataclass
class TrainResult:
    steps: int
    epochs: int
    best_bleu: float
    last_bleu: float
    seconds: float
    tokens_per_second: float  # target tokens, training steps only (validation excluded)
    stopped_early: bool


class JsonlLog:
    """Appends one JSON object per line; flushed so a crash loses nothing already logged."""

    def __init__(self, path: Path) -> None:
        self.file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def write(self, **record: object) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


class Trainer:
    def __init__(self, recipe: Recipe, force: bool = False, progress: bool = True) -> None:
        self.recipe = recipe
        self.cfg = recipe.train
        self.run_dir = Path(recipe.run_dir)
        self.show_progress = progress
        last = self.run_dir / "last.pt"
        if last.exists() and not force:
            raise NmtError(
                f"{self.run_dir} already holds a trained model; use --force to train again "
                "from scratch (its checkpoints will be replaced)"
            )
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
        self.precision = resolve_precision(self.cfg.precision, self.device)
        src_tok, tgt_tok = self.prepared.src_tok, self.prepared.tgt_tok
        self.model = build_model(recipe.model, len(src_tok), len(tgt_tok), m["joint"]).to(
            self.device
        )
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
        self.best_bleu = -1.0
        self.last_bleu = -1.0
        self.bad_validations = 0

    # -- the loop ---------------------------------------------------------------------------

    def train(self) -> TrainResult:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        config.dump(self.recipe, self.run_dir / "recipe.yaml")
        (self.run_dir / "log.jsonl").unlink(missing_ok=True)
        self.log = JsonlLog(self.run_dir / "log.jsonl")
        n_params = count_parameters(self.model)
        log.info(
            f"model: {n_params / 1e6:.2f}M parameters; {len(self.train_data)} training pairs; "
            f"device {self.device}, precision {self.precision}"
        )
        self.log.write(
            kind="start",
            parameters=n_params,
            device=str(self.device),
            precision=self.precision,
            train_pairs=len(self.train_data),
        )
        start = time.perf_counter()
        train_seconds, train_tokens = 0.0, 0
        stopped_early = False
        with self._progress() as bar:
            task = bar.add_task("training", total=self.cfg.max_steps, info="")
            window_loss = torch.zeros((), device=self.device)
            window_tokens, window_start = 0, time.perf_counter()
            while self.epoch < self.cfg.max_epochs and self.step < self.cfg.max_steps:
                self.epoch += 1
                for group in self._updates(self.epoch):
                    loss_sum, n_tokens = self._update(group)
                    self.step += 1
                    window_loss += loss_sum
                    window_tokens += n_tokens
                    if self.step % self.cfg.log_every == 0:
                        elapsed = time.perf_counter() - window_start
                        train_seconds += elapsed
                        train_tokens += window_tokens
                        record = {
                            "step": self.step,
                            "epoch": self.epoch,
                            "loss": window_loss.item() / max(window_tokens, 1),
                            "lr": self.optimizer.param_groups[0]["lr"],
                            "tgt_tokens_per_s": window_tokens / elapsed,
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
                    if stopped_early or self.step >= self.cfg.max_steps:
                        break
                if stopped_early:
                    break
            if window_tokens:
                train_seconds += time.perf_counter() - window_start
                train_tokens += window_tokens
            if self.step % self.cfg.valid_every != 0:
                self._validate()
        result = TrainResult(
            steps=self.step,
            epochs=self.epoch,
            best_bleu=self.best_bleu,
            last_bleu=self.last_bleu,
            seconds=time.perf_counter() - start,
            tokens_per_second=train_tokens / train_seconds if train_seconds else 0.0,
            stopped_early=stopped_early,
        )
        self.log.write(kind="end", **vars(result))
        self.log.close()
        return result

    def _updates(self, epoch: int) -> Iterator[list[Batch]]:
        """This epoch's batches (reshuffled with the seed), grouped `accum_steps` per update."""
        batches = token_batches(
            self.train_data.src.lengths,
            self.train_data.tgt.lengths,
            self.cfg.max_tokens,
            seed=self.recipe.seed * 100_003 + epoch,
        )
        k = self.cfg.accum_steps
        for i in range(0, len(batches) - k + 1, k):
            yield [collate(self.train_data, b) for b in batches[i : i + k]]

    def _update(self, group: list[Batch]) -> tuple[torch.Tensor, int]:
        """One optimizer step over `accum_steps` batches; the loss is per target token of all."""
        self.model.train()
        n_tokens = sum(b.n_tgt_tokens for b in group)
        lr = inverse_sqrt_lr(self.step + 1, self.cfg.lr, self.cfg.warmup_steps)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        total = torch.zeros((), device=self.device)
        for batch in group:
            batch = batch.to(self.device)
            with autocast(self.device, self.precision):
                loss = batch_loss(self.model, batch, self.cfg.label_smoothing)
            self.scaler.scale(loss / n_tokens).backward()
            total += loss.detach()
        if self.cfg.clip_norm > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
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
        checkpoint.save(
            {
                "model": self.model.state_dict(),
                "recipe": config.to_dict(self.recipe),
                "tokenizers": {
                    "src": self.prepared.src_tok.proto,
                    "tgt": self.prepared.tgt_tok.proto,
                },
                "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(),
                "step": self.step,
                "epoch": self.epoch,
                "best_bleu": self.best_bleu,
            },
            self.run_dir / name,
        )

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


def train(recipe: Recipe, force: bool = False, progress: bool = True) -> TrainResult:
    return Trainer(recipe, force=force, progress=progress).train()
