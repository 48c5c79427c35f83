"""Training pieces against independent references: the loss, the schedule, accumulation."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import tiny_recipe

from nmt import config, data
from nmt.data import collate
from nmt.tokenizer import PAD
from nmt.train import Trainer, batch_loss, inverse_sqrt_lr


@pytest.fixture(scope="module")
def trainer_recipe(tmp_path_factory, small_corpus):
    folder = tmp_path_factory.mktemp("train_unit")
    recipe = config.from_dict(
        tiny_recipe(small_corpus, folder / "run", model={"dropout": 0.0}, train={"clip_norm": 0.0})
    )
    data.preprocess(recipe)
    return recipe


def test_inverse_sqrt_schedule():
    warmup, peak = 100, 1e-3
    for step in (1, 50, 100, 101, 400, 10_000):
        expected = peak * step / warmup if step <= warmup else peak * math.sqrt(warmup / step)
        assert inverse_sqrt_lr(step, peak, warmup) == pytest.approx(expected, rel=1e-12)


def test_batch_loss_matches_float64_label_smoothed_cross_entropy(trainer_recipe):
    trainer = Trainer(trainer_recipe, force=True, progress=False)
    model = trainer.model.eval()
    batch = collate(trainer.valid_data, list(range(6)))
    eps = 0.1
    with torch.no_grad():
        ours = batch_loss(model, batch, label_smoothing=eps).item()
        logits = model(batch.src, batch.tgt_in).double()  # all positions, padding included
    log_probs = logits.log_softmax(-1)
    vocab = log_probs.shape[-1]
    total = 0.0
    for b in range(batch.tgt_out.shape[0]):
        for t in range(batch.tgt_out.shape[1]):
            y = int(batch.tgt_out[b, t])
            if y == PAD:
                continue
            # (1 - eps) * NLL of the reference + eps * mean NLL over the vocabulary.
            total += (
                -(1 - eps) * log_probs[b, t, y].item() - eps * log_probs[b, t].sum().item() / vocab
            )
    assert ours == pytest.approx(total, rel=1e-5)


def _gradients_of_update(trainer: Trainer, group) -> tuple[list[torch.Tensor], float, int]:
    """Run one `_update` and return the gradients the optimizer was given."""
    seen: list[torch.Tensor] = []
    step = trainer.optimizer.step

    def record(*args, **kwargs):
        seen.extend(p.grad.clone() for p in trainer.model.parameters())
        return step(*args, **kwargs)

    trainer.optimizer.step = record
    loss, tokens = trainer._update(group)
    return seen, float(loss), tokens


def test_accumulating_two_halves_equals_one_full_batch(trainer_recipe):
    """The gradient of an update over two accumulated halves equals that of the whole batch
    (the loss is normalised by the update's target tokens, not per batch)."""
    full = Trainer(trainer_recipe, force=True, progress=False)
    halves = Trainer(trainer_recipe, force=True, progress=False)
    halves.model.load_state_dict(full.model.state_dict())
    indices = list(range(16))
    grads_full, loss_full, tokens_full = _gradients_of_update(
        full, [collate(full.train_data, indices)]
    )
    grads_halves, loss_halves, tokens_halves = _gradients_of_update(
        halves, [collate(full.train_data, indices[:5]), collate(full.train_data, indices[5:])]
    )
    assert tokens_full == tokens_halves
    assert loss_full == pytest.approx(loss_halves, rel=1e-5)
    names = [name for name, _ in full.model.named_parameters()]
    for name, a, b in zip(names, grads_full, grads_halves):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4, msg=name)
    assert sum(float(g.abs().sum()) for g in grads_full) > 0


class _Faulty(torch.nn.Module):
    """Wraps the loss module; call number `at` fails the way `fault` says."""

    def __init__(self, inner: torch.nn.Module, at: int, fault: str) -> None:
        super().__init__()
        self.inner, self.at, self.fault, self.calls = inner, at, fault, 0

    def forward(self, *args):
        self.calls += 1
        loss = self.inner(*args)
        if self.calls == self.at:
            if self.fault == "oom":
                raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")
            return loss * float("nan")
        return loss


def _weights(trainer: Trainer) -> list[torch.Tensor]:
    return [p.detach().clone() for p in trainer.model.parameters()]


@pytest.mark.parametrize("fault", ["nan", "oom"])
def test_faulty_update_is_skipped_and_counted(trainer_recipe, fault):
    trainer = Trainer(trainer_recipe, force=True, progress=False)
    trainer.loss_module = _Faulty(trainer.loss_module, at=1, fault=fault)
    before = _weights(trainer)
    batch = collate(trainer.train_data, list(range(8)))
    trainer._update([batch])
    assert all(torch.equal(a, b) for a, b in zip(before, _weights(trainer)))
    assert (trainer.nonfinite_skipped, trainer.oom_skipped) == (
        (1, 0) if fault == "nan" else (0, 1)
    )
    assert all(p.grad is None for p in trainer.model.parameters())
    trainer._update([batch])  # the next update is applied as usual
    assert not all(torch.equal(a, b) for a, b in zip(before, _weights(trainer)))


def test_training_goes_on_after_an_out_of_memory_batch(tmp_path, small_corpus, trainer_recipe):
    recipe = config.from_dict(
        tiny_recipe(
            small_corpus,
            tmp_path / "run",
            data={"prepared_dir": str(trainer_recipe.prepared_dir)},
            train={"max_steps": 6, "valid_every": 6, "log_every": 2},
        )
    )
    trainer = Trainer(recipe, progress=False)
    trainer.loss_module = _Faulty(trainer.loss_module, at=3, fault="oom")
    result = trainer.train()
    assert result.steps == 6
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").open()]
    assert [r["skipped_oom"] for r in records if r["kind"] == "train"] == [0, 1, 1]
