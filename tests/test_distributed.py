"""torchrun with 2 CPU processes (gloo) trains the same weights as one process that sees the
same global batches (one process, accum_steps 2 = two ranks, accum_steps 1)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_recipe, write_recipe

from nmt import config
from nmt.data.dataset import Prepared
from nmt.data.preprocess import preprocess
from nmt.training import loop as train
from nmt.training import run

ROOT = Path(__file__).resolve().parent.parent
STEPS = 6
# No dropout, so both runs draw no random numbers while training. Adam's eps is raised from
# 1e-9: a few parameters (the key biases) get gradients that are rounding noise, and with a tiny
# eps Adam would blow that noise up into visible, order-dependent updates.
MODEL = {"dropout": 0.0}
# The recurrent model: the same contract, packed sequences and a Python loop over time steps.
RNN = {
    "arch": "rnn",
    "attention": "bahdanau",
    "rnn_type": "gru",
    "d_model": 32,
    "hidden_size": 32,
    "encoder_layers": 1,
    "decoder_layers": 1,
    "dropout": 0.0,
}
TRAIN = {"max_steps": STEPS, "valid_every": 100, "log_every": 1, "max_tokens": 512, "eps": 1e-6}


def state_of(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "last.pt", weights_only=True)["model"]


def _recipe(corpus: Path, run_dir: Path, prepared: Path, model: dict, **train_values) -> dict:
    tree = tiny_recipe(
        corpus, run_dir, data={"prepared_dir": str(prepared)}, train={**TRAIN, **train_values}
    )
    # The whole model section: the tiny Transformer's keys (heads, ...) do not apply to an RNN.
    tree["model"] = {**tree["model"], **model} if model is MODEL else model
    return tree


@pytest.mark.slow
@pytest.mark.parametrize("model", [MODEL, RNN], ids=["transformer", "rnn"])
def test_two_gloo_processes_equal_one_process_with_accumulation(tmp_path, small_corpus, model):
    shared = config.from_dict(tiny_recipe(small_corpus, tmp_path / "prep", train=TRAIN))
    preprocess(shared)
    prepared = shared.prepared_dir

    single_dir = tmp_path / "single"
    single = _recipe(small_corpus, single_dir, prepared, model, accum_steps=2, threads=1)
    train.train(config.from_dict(single), progress=False)

    ddp_dir = tmp_path / "ddp"
    recipe = write_recipe(tmp_path / "ddp.yaml", _recipe(small_corpus, ddp_dir, prepared, model))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "nmt",
            "train",
            str(recipe),
            "--no-progress",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "rank 1 of 2" in result.stderr

    # Rank 0 alone wrote the log and checkpoints; steps and token counts are global.
    records = [json.loads(line) for line in (ddp_dir / "log.jsonl").open()]
    ddp_steps = [(r["step"], r["loss"]) for r in records if r["kind"] == "train"]
    single_records = [json.loads(line) for line in (single_dir / "log.jsonl").open()]
    single_steps = [(r["step"], r["loss"]) for r in single_records if r["kind"] == "train"]
    assert [s for s, _ in ddp_steps] == list(range(1, STEPS + 1))
    for (_, a), (_, b) in zip(ddp_steps, single_steps):
        assert a == pytest.approx(b, rel=1e-5)

    ddp_state, single_state = state_of(ddp_dir), state_of(single_dir)
    assert ddp_state.keys() == single_state.keys()
    for name in single_state:
        torch.testing.assert_close(
            ddp_state[name], single_state[name], atol=2e-5, rtol=1e-4, msg=name
        )
    # The weights did move: this is not two untrained models compared.
    recipe = config.from_dict(single)
    start = run.initial_model(recipe, Prepared.open(recipe.prepared_dir)).state_dict()
    moved = sum(not torch.equal(start[k], single_state[k]) for k in start)
    assert moved > len(start) // 2
