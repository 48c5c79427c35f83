"""Exact resume: a run stopped (SIGKILL, SIGTERM, or by max_steps) and started again with the
same command continues with the same per-step losses as a run that was never stopped."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import tiny_recipe, write_recipe

from nmt import config
from nmt.data.preprocess import preprocess
from nmt.errors import NmtError
from nmt.training import loop as train

ROOT = Path(__file__).resolve().parent.parent
STEPS = 14
TRAIN = {"max_steps": STEPS, "valid_every": 4, "log_every": 1, "max_tokens": 512}


def step_losses(run_dir: Path) -> dict[int, float]:
    """The last logged training loss of each step (a resumed run logs the redone steps again)."""
    losses = {}
    for line in (run_dir / "log.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record["kind"] == "train":
            losses[record["step"]] = record["loss"]
    return losses


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, small_corpus) -> Path:
    folder = tmp_path_factory.mktemp("resume_data")
    recipe = config.from_dict(tiny_recipe(small_corpus, folder / "run", train=TRAIN))
    preprocess(recipe)
    return recipe.prepared_dir


def make_recipe(folder: Path, corpus: Path, prepared: Path, **train_values) -> Path:
    recipe = tiny_recipe(
        corpus,
        folder / "run",
        data={"prepared_dir": str(prepared)},
        train={**TRAIN, "threads": 1, **train_values},
    )
    return write_recipe(folder / "recipe.yaml", recipe)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, small_corpus, prepared) -> dict[int, float]:
    """Per-step losses of an uninterrupted run."""
    folder = tmp_path_factory.mktemp("reference")
    train.train(config.load(make_recipe(folder, small_corpus, prepared)), progress=False)
    losses = step_losses(folder / "run")
    assert sorted(losses) == list(range(1, STEPS + 1))
    return losses


def nmt_train(recipe: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "nmt", "-q", "train", str(recipe), "--no-progress"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_step(run_dir: Path, step: int, process: subprocess.Popen, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        log = run_dir / "log.jsonl"
        if log.exists() and max(step_losses(run_dir), default=0) >= step:
            return
        time.sleep(0.05)
    raise AssertionError(f"step {step} not reached in {timeout}s")


def assert_same_losses(got: dict[int, float], expected: dict[int, float]) -> None:
    assert sorted(got) == sorted(expected)
    for step in expected:
        assert got[step] == pytest.approx(expected[step], rel=1e-5, abs=1e-6), step


def test_resume_after_max_steps_matches_uninterrupted(tmp_path, small_corpus, prepared, reference):
    recipe = make_recipe(tmp_path, small_corpus, prepared)
    first = train.train(config.load(recipe, ["train.max_steps=7"]), progress=False)
    assert first.steps == 7
    resumed = train.train(config.load(recipe), progress=False)
    assert resumed.steps == STEPS
    assert_same_losses(step_losses(tmp_path / "run"), reference)
    kinds = [json.loads(line)["kind"] for line in (tmp_path / "run" / "log.jsonl").open()]
    assert kinds.count("start") == 1 and kinds.count("resume") == 1


def test_sigkill_then_resume_matches_uninterrupted(tmp_path, small_corpus, prepared, reference):
    recipe = make_recipe(tmp_path, small_corpus, prepared)
    process = nmt_train(recipe)
    wait_for_step(tmp_path / "run", 10, process)  # last.pt was saved at step 8
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert (tmp_path / "run" / "last.pt").is_file()
    resumed = nmt_train(recipe)
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert_same_losses(step_losses(tmp_path / "run"), reference)


def test_sigterm_saves_then_resume_matches_uninterrupted(
    tmp_path, small_corpus, prepared, reference
):
    recipe = make_recipe(tmp_path, small_corpus, prepared)
    process = nmt_train(recipe)
    wait_for_step(tmp_path / "run", 5, process)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 143, err
    assert "run the same command to resume" in err
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").open()]
    [stop] = [r for r in records if r["kind"] == "interrupted"]
    assert stop["signal"] == "SIGTERM" and stop["step"] < STEPS
    resumed = nmt_train(recipe)
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert_same_losses(step_losses(tmp_path / "run"), reference)


def test_resume_refuses_a_changed_model_and_a_finished_run(tmp_path, small_corpus, prepared):
    recipe = make_recipe(tmp_path, small_corpus, prepared, max_steps=4)
    train.train(config.load(recipe), progress=False)
    with pytest.raises(NmtError, match=r"different model\.d_model; .* or use --force"):
        train.train(config.load(recipe, ["model.d_model=64"]), progress=False)
    with pytest.raises(NmtError, match=r"already trained to step 4 .*raise train\.max_steps"):
        train.train(config.load(recipe), progress=False)
    # --force starts again from step 0.
    result = train.train(config.load(recipe), force=True, progress=False)
    assert result.steps == 4
    kinds = [json.loads(line)["kind"] for line in (tmp_path / "run" / "log.jsonl").open()]
    assert kinds.count("start") == 1 and "resume" not in kinds


def test_resume_of_a_checkpoint_written_before_a_key_existed(tmp_path, small_corpus, prepared):
    """A recipe key added to nmt after a checkpoint was written takes its default there, so
    the run resumes instead of counting the new key as a change."""
    import torch

    recipe = make_recipe(tmp_path, small_corpus, prepared, max_steps=4)
    train.train(config.load(recipe), progress=False)
    last = tmp_path / "run" / "last.pt"
    state = torch.load(last, weights_only=True)
    del state["recipe"]["model"]["luong_scaled"]  # as if written before the key existed
    torch.save(state, last)
    resumed = train.train(config.load(recipe, ["train.max_steps=6"]), progress=False)
    assert resumed.steps == 6
