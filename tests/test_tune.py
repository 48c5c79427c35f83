"""`nmt tune`: decoding settings chosen on the validation set and written into the run's
recipe.yaml, which `nmt translate RUN_DIR` then decodes with."""

from __future__ import annotations

import json
import shutil

import torch
import yaml
from test_cli import assert_user_error, nmt

from nmt import config
from nmt.data.dataset import Prepared
from nmt.decoding.translator import Translator
from nmt.score import score_lines


def test_tune_picks_the_best_pair_on_the_validation_set(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)  # the session's run stays as it was
    before = yaml.safe_load((run / "recipe.yaml").read_text())["decode"]
    result = nmt("tune", run, "--beam-size", "1,2", "--length-penalty", "0.5,1.5")
    assert result.exit_code == 0, result.output
    record = json.loads((run / "tune.json").read_text())
    trials = record["trials"]
    # The run's own setting first, then the four pairs asked for.
    assert [(t["beam_size"], t["length_penalty"]) for t in trials] == [
        (before["beam_size"], before["length_penalty"]),
        (1, 0.5),
        (1, 1.5),
        (2, 0.5),
        (2, 1.5),
    ]
    best = max(trials, key=lambda t: t["bleu"])
    assert record["chosen"] == best
    # Each trial's BLEU is what that setting really scores on the validation set.
    prepared = config.load(run / "recipe.yaml").prepared_dir
    sources, references = Prepared.open(prepared).raw_valid()
    for t in trials[1:3]:
        translator = Translator.load(
            run, method="beam", beam_size=t["beam_size"], length_penalty=t["length_penalty"]
        )
        hyps = translator.translate(sources)
        assert score_lines(hyps, [references])[0].score == t["bleu"]
    # Written where `nmt translate RUN_DIR` reads its settings.
    decode = Translator.load(run).decode
    assert (decode.beam_size, decode.length_penalty) == (best["beam_size"], best["length_penalty"])
    assert "<- chosen" in result.stdout


def test_tune_without_writing_and_bad_input(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    recipe_text = (run / "recipe.yaml").read_text()
    result = nmt("tune", run, "--beam-size", "2", "--length-penalty", "0.7", "--no-write")
    assert result.exit_code == 0, result.output
    assert (run / "recipe.yaml").read_text() == recipe_text and not (run / "tune.json").exists()
    assert_user_error(nmt("tune", run, "--beam-size", "two"), "comma-separated numbers")
    assert_user_error(nmt("tune", run, "--beam-size", "0"), "beam sizes must be >= 1")
    assert_user_error(nmt("tune", tmp_path), "is not a run folder")


def test_tune_an_ensemble(trained_run, tmp_path):
    # best.pt and last.pt are different weights with the same vocabularies: a real ensemble.
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    member = run / "last.pt"
    result = nmt("tune", run, member, "--beam-size", "1,2", "--length-penalty", "0.5,1.5")
    assert result.exit_code == 0, result.output
    record = json.loads((run / "tune.json").read_text())
    assert record["ensemble"] == [str(run), str(member)]
    prepared = config.load(run / "recipe.yaml").prepared_dir
    sources, references = Prepared.open(prepared).raw_valid()
    for t in record["trials"][1:]:
        # Each trial scores what the ensemble, not the first model, translates with it.
        settings = {
            "method": "beam",
            "beam_size": t["beam_size"],
            "length_penalty": t["length_penalty"],
        }
        hyps = Translator.load([run, member], **settings).translate(sources)
        assert score_lines(hyps, [references])[0].score == t["bleu"]
    alone = Translator.load(run, method="beam", beam_size=2, length_penalty=1.5)
    pair = Translator.load([run, member], method="beam", beam_size=2, length_penalty=1.5)
    assert alone.translate(sources) != pair.translate(sources)
    chosen = record["chosen"]
    decode = Translator.load([run, member]).decode
    assert (decode.beam_size, decode.length_penalty) == (
        chosen["beam_size"],
        chosen["length_penalty"],
    )
    other = torch.load(run / "best.pt", weights_only=True)
    other["tokenizers"] = {"src": b"x", "tgt": b"x"}
    torch.save(other, tmp_path / "other.pt")
    assert_user_error(nmt("tune", run, tmp_path / "other.pt"), "other vocabularies")
