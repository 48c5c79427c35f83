"""`train.keep_last`, `train.average_last` and `nmt average`: checkpoint averaging against a
float64 mean, and the choice between best.pt and averaged.pt."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_recipe, write_recipe
from test_cli import assert_user_error, nmt

from nmt import config
from nmt.data.dataset import Prepared
from nmt.data.preprocess import preprocess
from nmt.training import loop as train


def test_keep_last_then_average(tmp_path, small_corpus):
    recipe_path = write_recipe(
        tmp_path / "r.yaml",
        tiny_recipe(
            small_corpus,
            tmp_path / "run",
            train={"max_steps": 6, "valid_every": 2, "keep_last": 2},
        ),
    )
    recipe = config.load(recipe_path)
    preprocess(recipe)
    train.train(recipe, progress=False)
    run = tmp_path / "run"
    assert sorted(p.name for p in run.glob("step_*.pt")) == ["step_4.pt", "step_6.pt"]

    out = tmp_path / "avg.pt"
    result = nmt("average", run, "--last", "2", "-o", out)
    assert result.exit_code == 0, result.output
    a, b = (torch.load(run / f"step_{n}.pt", weights_only=True)["model"] for n in (4, 6))
    avg = torch.load(out, weights_only=True)["model"]
    for name in a:
        expected = (a[name].double() + b[name].double()) / 2
        torch.testing.assert_close(avg[name].double(), expected, atol=1e-7, rtol=0)
    assert not torch.equal(a["tgt_embed.weight"], b["tgt_embed.weight"])
    # The same two files named one by one give the same result.
    again = tmp_path / "again.pt"
    assert nmt("average", run / "step_4.pt", run / "step_6.pt", "-o", again).exit_code == 0
    assert all(torch.equal(avg[k], torch.load(again, weights_only=True)["model"][k]) for k in avg)

    # The averaged checkpoint translates.
    translated = nmt("translate", out, "--greedy", input="The dog laughed.\n")
    assert translated.exit_code == 0 and len(translated.stdout.splitlines()) == 1

    # Errors: existing output, too few checkpoints, another model.
    assert_user_error(nmt("average", run, "--last", "2", "-o", out), "exists; use --force")
    assert_user_error(
        nmt("average", run, "--last", "5", "-o", tmp_path / "x.pt"), "fewer than --last 5"
    )
    # A run folder without --last, or a single checkpoint, is not an average of anything.
    assert_user_error(nmt("average", run, "-o", tmp_path / "z.pt"), "is a run folder")
    assert_user_error(
        nmt("average", run / "step_6.pt", "-o", tmp_path / "z.pt"), "two or more checkpoints"
    )
    assert not (tmp_path / "z.pt").exists()
    other = torch.load(run / "step_4.pt", weights_only=True)
    other["recipe"]["model"]["d_model"] = 64
    torch.save(other, tmp_path / "other.pt")
    assert_user_error(
        nmt("average", run / "step_6.pt", tmp_path / "other.pt", "-o", tmp_path / "y.pt"),
        "has another model",
    )


def test_average_last_writes_validates_and_selects(tmp_path, small_corpus):
    """train.average_last: averaged.pt is the float64 mean of the last N step checkpoints, it is
    validated, and `nmt translate RUN` uses whichever of best.pt and averaged.pt validated
    higher, saying so on stderr."""
    recipe = config.from_dict(
        tiny_recipe(
            small_corpus,
            tmp_path / "run",
            train={"max_steps": 24, "valid_every": 6, "average_last": 3},
        )
    )
    preprocess(recipe)
    result = train.train(recipe, progress=False)
    run = tmp_path / "run"
    # average_last keeps the step checkpoints it needs (keep_last is 0).
    names = ["step_12.pt", "step_18.pt", "step_24.pt"]
    assert sorted(p.name for p in run.glob("step_*.pt")) == sorted(names)
    steps = [torch.load(run / n, weights_only=True)["model"] for n in names]
    averaged = torch.load(run / "averaged.pt", weights_only=True)
    for name in steps[0]:
        expected = sum(s[name].double() for s in steps) / 3
        torch.testing.assert_close(averaged["model"][name].double(), expected, atol=1e-7, rtol=0)
    records = [json.loads(line) for line in (run / "log.jsonl").open()]
    [record] = [r for r in records if r["kind"] == "averaged"]
    assert record["checkpoints"] == names and record["valid_bleu"] == result.averaged_bleu
    selection = json.loads((run / "selected.json").read_text())
    chosen = "averaged.pt" if result.averaged_bleu >= result.best_bleu else "best.pt"
    assert selection["checkpoint"] == chosen == result.selected
    # The averaged weights score what the log says when validated again from the file.
    from nmt.decoding.translator import Translator
    from nmt.training.validate import validate

    prepared = Prepared.open(recipe.prepared_dir)
    translator = Translator.load(run / "averaged.pt", method="greedy")
    again = validate(translator, prepared.dataset("valid"), *prepared.raw_valid(), 1024)
    assert again.bleu == pytest.approx(record["valid_bleu"], abs=1e-6)
    # `nmt translate RUN` says which checkpoint it took.
    out = nmt("translate", run, "--greedy", input="The dog laughed.\n")
    assert out.exit_code == 0 and f"using{run / chosen}" in "".join(out.stderr.split())
