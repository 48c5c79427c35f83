"""`train.keep_last` and `nmt average`: checkpoint averaging against a float64 mean."""

from __future__ import annotations

import torch
from conftest import tiny_recipe, write_recipe
from test_cli import assert_user_error, nmt

from nmt import config, data, train


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
    data.preprocess(recipe)
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
    other = torch.load(run / "step_4.pt", weights_only=True)
    other["recipe"]["model"]["d_model"] = 64
    torch.save(other, tmp_path / "other.pt")
    assert_user_error(
        nmt("average", run / "step_6.pt", tmp_path / "other.pt", "-o", tmp_path / "y.pt"),
        "has another model",
    )
