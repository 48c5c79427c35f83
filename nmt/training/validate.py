"""Validation: a model's loss, perplexity and BLEU on the validation set; during training, the
checkpoints kept after each validation, and at its end the averaged checkpoint and the choice
between it and best.pt."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from nmt import checkpoint
from nmt.data.batches import collate, token_batches
from nmt.data.dataset import ParallelDataset
from nmt.decoding.translator import Translator
from nmt.score import score_lines
from nmt.training.loss import batch_loss
from nmt.utils.device import autocast

if TYPE_CHECKING:
    from nmt.training.run import Run
    from nmt.training.runlog import JsonlLog

log = logging.getLogger("nmt")


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


def validate_and_save(run: Run, events: JsonlLog) -> Validation:
    """Loss, perplexity and BLEU on the validation set; then last.pt, best.pt (when BLEU
    improved) and the step checkpoints kept for averaging."""
    state, cfg = run.state, run.recipe.train
    result = validate(run.translator, run.valid_data, run.valid_src, run.valid_ref, cfg.max_tokens)
    (run.run_dir / "valid.hyp").write_text(
        "".join(h + "\n" for h in result.hypotheses), encoding="utf-8"
    )
    improved = result.bleu > state.best_bleu
    state.last_bleu = result.bleu
    if improved:
        state.best_bleu = result.bleu
        state.bad_validations = 0
    else:
        state.bad_validations += 1
    run.save("last.pt")
    if improved:
        run.save_weights("best.pt")
    if cfg.checkpoints_kept:
        run.save_weights(f"step_{state.step}.pt")
        for old in checkpoint.step_checkpoints(run.run_dir)[: -cfg.checkpoints_kept]:
            old.unlink()
    events.write(
        kind="valid",
        step=state.step,
        epoch=state.epoch,
        valid_loss=result.loss,
        valid_ppl=result.perplexity,
        valid_bleu=result.bleu,
        best_bleu=state.best_bleu,
        seconds=result.seconds,
        elapsed=state.seconds,
    )
    log.info(
        f"step {state.step} epoch {state.epoch}: valid loss {result.loss:.3f} ppl "
        f"{result.perplexity:.2f} BLEU {result.bleu:.2f} (best {state.best_bleu:.2f})"
        + (" *" if improved else "")
    )
    return result


def average_and_select(run: Run, events: JsonlLog) -> tuple[float | None, str]:
    """Average the last `average_last` step checkpoints into averaged.pt, validate it, and
    record which of best.pt and averaged.pt `nmt translate RUN_DIR` should use."""
    cfg = run.recipe.train
    paths = checkpoint.step_checkpoints(run.run_dir)[-cfg.average_last :]
    if len(paths) < 2:
        log.warning(
            f"train.average_last={cfg.average_last}, but only {len(paths)} step checkpoint(s) "
            "exist; nothing averaged (validate more often: train.valid_every)"
        )
        return None, "best.pt"
    if len(paths) < cfg.average_last:
        log.warning(f"averaging {len(paths)} step checkpoints, fewer than {cfg.average_last}")
    averaged = checkpoint.average(paths)
    checkpoint.save(averaged, run.run_dir / checkpoint.AVERAGED)
    run.model.load_state_dict(averaged["model"])  # training is over: reuse the model
    result = validate(run.translator, run.valid_data, run.valid_src, run.valid_ref, cfg.max_tokens)
    best = run.state.best_bleu
    selected = checkpoint.AVERAGED if result.bleu >= best else "best.pt"
    checkpoint.write_selection(
        run.run_dir,
        selected,
        {"best.pt": best, checkpoint.AVERAGED: result.bleu},
        reason="higher validation BLEU",
    )
    events.write(
        kind="averaged",
        step=run.state.step,
        checkpoints=[p.name for p in paths],
        valid_loss=result.loss,
        valid_ppl=result.perplexity,
        valid_bleu=result.bleu,
        best_bleu=best,
        selected=selected,
        seconds=result.seconds,
    )
    log.info(
        f"averaged {len(paths)} checkpoints: valid BLEU {result.bleu:.2f} (best.pt "
        f"{best:.2f}); nmt translate {run.run_dir} will use {selected}"
    )
    return result.bleu, selected
