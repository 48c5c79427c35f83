"""train.max_time: a wall-clock budget for the whole run, a decay fitted to end inside it, and
an exact resume of a run the budget stopped."""

from __future__ import annotations

import json
import statistics
from types import SimpleNamespace

import pytest
from conftest import tiny_recipe
from test_resume import STEPS, TRAIN, assert_same_losses, make_recipe, step_losses

from nmt import config
from nmt.data.preprocess import preprocess
from nmt.errors import NmtError
from nmt.training import budget
from nmt.training import loop as train


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, small_corpus):
    folder = tmp_path_factory.mktemp("budget_data")
    recipe = config.from_dict(tiny_recipe(small_corpus, folder / "run", train=TRAIN))
    preprocess(recipe)
    return recipe.prepared_dir


def _cosine_to_budget(folder, corpus, prepared, **train_values) -> config.Recipe:
    """A tiny recipe with a cosine decay that train.max_time fits, logging every update."""
    train_values = {"schedule": "cosine", "log_every": 1, "threads": 1, **train_values}
    return config.from_dict(
        tiny_recipe(
            corpus, folder / "run", data={"prepared_dir": str(prepared)}, train=train_values
        )
    )


def test_budget_stops_the_run_and_the_decay_ends_inside_it(tmp_path, small_corpus, prepared):
    budget = 6.0
    recipe = _cosine_to_budget(
        tmp_path,
        small_corpus,
        prepared,
        max_time=f"{budget}s",
        min_lr=1e-5,
        # The decay's end is fitted when the warm-up ends, from the time of an update and of
        # the last validation: let one validation come first, as in real recipes.
        warmup_steps=20,
        max_steps=100_000,
        valid_every=20,
        average_last=2,
    )
    result = train.train(recipe, progress=False)
    assert result.out_of_time and not result.interrupted
    # The whole run, its last validation and the averaging included, kept to the budget
    # (give or take the one update that was running when time was up).
    assert result.seconds <= budget + 1.0
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").open()]
    [fitted] = [r for r in records if r["kind"] == "schedule"]
    assert fitted["step"] == 20 and 20 < fitted["end"] < 100_000
    # The decay reached min_lr before the run stopped, near the step it was fitted to end at.
    lrs = {r["step"]: r["lr"] for r in records if r["kind"] == "train"}
    assert lrs[max(lrs)] == pytest.approx(1e-5) or max(lrs) < fitted["end"]
    assert abs(max(lrs) - fitted["end"]) <= 0.35 * fitted["end"]
    assert records[-1]["kind"] == "end" and records[-1]["out_of_time"]
    assert any(r["kind"] == "averaged" for r in records)
    # A resume is refused: the budget is spent.
    with pytest.raises(NmtError, match=r"has used its train\.max_time .* raise train\.max_time"):
        train.train(recipe, progress=False)


def test_logged_tokens_per_second_time_each_window_alone(
    tmp_path, small_corpus, prepared, monkeypatch
):
    """Each train record's rate is its own window's tokens over its own seconds, the third one
    too, where fitting the decay to the budget reads the run's clock (it once overwrote the
    window's seconds with the whole run's there). The loop's clock is made a counter, one second
    a reading, so every window of one update lasts the same two readings."""
    readings = iter(range(1_000_000))
    monkeypatch.setattr(train, "time", SimpleNamespace(perf_counter=lambda: float(next(readings))))
    recipe = _cosine_to_budget(
        tmp_path,
        small_corpus,
        prepared,
        max_time="1h",
        warmup_steps=8,
        max_steps=12,
        valid_every=100,
        max_tokens=512,
    )
    train.train(recipe, progress=False)
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").open()]
    rates = {r["step"]: r["tgt_tokens_per_s"] for r in records if r["kind"] == "train"}
    assert sorted(rates) == list(range(1, 13))
    # 512-token batches of a small corpus differ in their tokens, not by a factor of 2.
    typical = statistics.median(rates.values())
    for step, rate in rates.items():
        assert typical / 2 < rate < typical * 2, (step, rate, typical)


def test_run_stopped_by_the_budget_resumes_exactly(tmp_path, small_corpus, prepared):
    """Stopped by a budget far too small (after its first update), then resumed without one:
    the per-step losses equal those of a run that was never stopped."""
    folder = tmp_path / "reference"
    folder.mkdir()
    train.train(config.load(make_recipe(folder, small_corpus, prepared)), progress=False)
    reference = step_losses(folder / "run")

    recipe = make_recipe(tmp_path, small_corpus, prepared, max_time=0.001)
    first = train.train(config.load(recipe), progress=False)
    assert first.out_of_time and first.steps < STEPS
    resumed = train.train(config.load(recipe, ["train.max_time=null"]), progress=False)
    assert resumed.steps == STEPS
    assert_same_losses(step_losses(tmp_path / "run"), reference)


def test_the_fit_extrapolates_the_pace_of_the_warm_ups_second_half():
    # (step, seconds of updates) at log windows: 1 s an update, then 2 s from step 100 on.
    paces = [(0, 0.0), (50, 50.0), (100, 100.0), (150, 200.0), (200, 300.0)]
    assert budget.update_seconds(paces, warmup_steps=200) == pytest.approx(2.0)
    # A session resumed past half the warm-up times what it saw itself.
    assert budget.update_seconds([(120, 0.0), (150, 60.0), (200, 160.0)], 200) == pytest.approx(2.0)
    # Nothing timed yet: no pace (the fit then leaves the decay's end at max_steps).
    assert budget.update_seconds([(200, 0.0)], 200) == 0.0


def test_a_warm_up_that_would_use_most_of_the_budget_is_warned_about():
    cfg = config.TrainConfig(max_time="2h10m", warmup_steps=2000, schedule="cosine")
    # 4.6 s an update (Bahdanau attention at every site, one thread): the warm-up alone takes
    # 480 s + 1,900 x 4.6 s = 2 h 34 min of a 2 h 10 min budget.
    advice = budget.warmup_advice(cfg, step=100, elapsed=480.0, step_seconds=4.6)
    assert "2000-update warm-up ends about 2h34m into the 2h10m budget" in advice
    assert "about 550" in advice  # 7,800 s / 3 / 4.6 s = 565, rounded down to a multiple of 50
    # 1.4 s an update (multi-head): the warm-up ends 47 min in, no warning.
    assert budget.warmup_advice(cfg, step=100, elapsed=150.0, step_seconds=1.4) is None
