"""Every subcommand through the `nmt` command line, including the errors a user can cause."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import torch
from typer.testing import CliRunner

from nmt.cli import app

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()


def nmt(*args: str, input: str | bytes | None = None):
    return runner.invoke(app, [str(a) for a in args], input=input)


def assert_user_error(result, *fragments: str) -> None:
    """Exit code 2, one line on stderr naming the problem, no traceback."""
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    message = result.stderr.strip()
    assert message.startswith("error: "), message
    assert "Traceback" not in result.output
    assert len(message.splitlines()) == 1 or all(len(line) > 0 for line in message.splitlines()), (
        message
    )
    for fragment in fragments:
        assert fragment in " ".join(message.split()), message


def test_help_lists_subcommands():
    result = nmt("--help")
    assert result.exit_code == 0
    for name in ("preprocess", "train", "translate", "score"):
        assert name in result.output
    for name in ("preprocess", "train", "translate", "score", "average"):
        assert nmt(name, "--help").exit_code == 0


def test_help_keeps_bracketed_defaults():
    # Rich markup once swallowed every "[default: ...]" written in an option's help.
    text = " ".join(nmt("translate", "--help").output.split())
    assert "[default: the recipe's decode.beam_size]" in text
    text = " ".join(nmt("train", "--help").output.split())
    assert "[default: resume from its last.pt if it has one]" in text


def test_python_m_nmt_entry_point():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "nmt", "score", "--help"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
    )
    assert result.returncode == 0
    assert "--metrics" in result.stdout


def test_preprocess_then_refuse_then_force(recipe_file):
    result = nmt("preprocess", recipe_file)
    assert result.exit_code == 0, result.output
    prepared = recipe_file.parent / "run" / "prepared"
    manifest = json.loads((prepared / "manifest.json").read_text())
    assert manifest["splits"]["train"] > 1000
    assert_user_error(nmt("preprocess", recipe_file), "already holds preprocessed data", "--force")
    assert nmt("preprocess", recipe_file, "--force").exit_code == 0


def test_train_writes_a_reproducible_run_folder(recipe_file):
    assert nmt("preprocess", recipe_file).exit_code == 0
    result = nmt(
        "train",
        recipe_file,
        "--no-progress",
        "--set",
        "train.max_steps=6",
        "--set",
        "train.valid_every=3",
    )
    assert result.exit_code == 0, result.output
    run = recipe_file.parent / "run"
    for name in ("best.pt", "last.pt", "log.jsonl", "recipe.yaml"):
        assert (run / name).is_file(), name
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    valid = [r for r in records if r["kind"] == "valid"]
    assert [r["step"] for r in valid] == [3, 6]
    assert all({"valid_loss", "valid_ppl", "valid_bleu"} <= r.keys() for r in valid)
    # The resolved recipe alone reproduces the run's settings, overrides included.
    from nmt import config

    resolved = config.load(run / "recipe.yaml")
    assert resolved.train.max_steps == 6 and resolved.run_dir == str(run.resolve())
    # The same command again has nothing left to do: it says so and keeps the checkpoints.
    before = (run / "last.pt").read_bytes()
    assert_user_error(
        nmt("train", recipe_file, "--no-progress", "--set", "train.max_steps=6"),
        "already trained to step 6",
        "--force",
    )
    assert (run / "last.pt").read_bytes() == before


def test_train_without_preprocess(recipe_file):
    assert_user_error(nmt("train", recipe_file, "--no-progress"), "nmt preprocess")


def test_bad_recipe_through_cli(tmp_path, recipe_file):
    assert_user_error(nmt("preprocess", recipe_file, "--set", "model.heads=3"), "model.d_model")
    assert_user_error(nmt("train", tmp_path / "missing.yaml"), "recipe not found")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {d_model: 256\n")
    assert_user_error(nmt("preprocess", bad), "invalid YAML", "line 2")


def test_translate_file_keeps_line_count_and_order(trained_run, tmp_path):
    src = tmp_path / "in.en"
    lines = ["The dog laughed.", "", "A cat saw the boy.", "   ", "The boy chased a ball."]
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "out.de"
    result = nmt("translate", trained_run, "-i", src, "-o", out)
    assert result.exit_code == 0, result.output
    got = out.read_text(encoding="utf-8").split("\n")
    assert got[-1] == "" and len(got) - 1 == len(lines)
    assert got[1] == "" and got[3] == ""
    # In order: each line translated alone gives the same output as in the file.
    single = nmt("translate", trained_run / "best.pt", "--greedy", input=lines[2] + "\n")
    alone = nmt("translate", trained_run / "best.pt", "--greedy", input="\n".join(lines) + "\n")
    assert single.stdout.splitlines()[0] == alone.stdout.splitlines()[2]


def test_translate_stdin_to_stdout(trained_run):
    result = nmt("translate", trained_run, "--beam-size", "2", input="The dog laughed.\n\nA cat.\n")
    assert result.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) == 3
    assert result.stdout.splitlines()[1] == ""


def test_translate_very_long_line_is_cut_with_a_warning(trained_run):
    long_line = " ".join(["the red dog"] * 600)
    result = nmt("translate", trained_run, "--greedy", input=f"A cat.\n{long_line}\nThe boy.\n")
    assert result.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) == 3
    assert "was cut to" in result.stderr


def test_translate_errors(trained_run, tmp_path):
    assert_user_error(
        nmt("translate", trained_run, "-i", tmp_path / "nope.txt"), "input file not found"
    )
    src = tmp_path / "in.txt"
    src.write_text("hello\n")
    assert_user_error(
        nmt("translate", trained_run, "-i", src, "-o", tmp_path / "no" / "out.txt"),
        "output folder does not exist",
    )
    assert_user_error(nmt("translate", tmp_path), "no checkpoint")
    assert_user_error(nmt("translate", tmp_path / "x.pt", "-i", src), "checkpoint not found")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(os.urandom(1000))
    assert_user_error(nmt("translate", bad, "-i", src), "not a readable checkpoint")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes((trained_run / "best.pt").read_bytes()[:5000])
    assert_user_error(nmt("translate", truncated, "-i", src), "not a readable checkpoint")
    not_ours = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, not_ours)
    assert_user_error(nmt("translate", not_ours, "-i", src), "not an nmt checkpoint")
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("ok\nSch\xf6n\n".encode("latin-1"))
    assert_user_error(nmt("translate", trained_run, "-i", latin1), "line 2", "not valid UTF-8")


def test_translate_error_keeps_existing_output(trained_run, tmp_path):
    out = tmp_path / "out.txt"
    out.write_text("precious\n")
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes(b"ok\n\xff\n")
    assert_user_error(nmt("translate", trained_run, "-i", latin1, "-o", out), "not valid UTF-8")
    assert out.read_text() == "precious\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch " + str(_RunsCode.marker),))


def test_checkpoint_that_runs_code_is_refused(trained_run, tmp_path):
    _RunsCode.marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    state = torch.load(trained_run / "best.pt", weights_only=True)
    state["payload"] = _RunsCode()
    torch.save(state, evil)
    src = tmp_path / "in.txt"
    src.write_text("hello\n")
    assert_user_error(nmt("translate", evil, "-i", src), "refusing to load it")
    assert not _RunsCode.marker.exists()
    # And a plain pickle file (not a torch zip) is refused the same way.
    plain = tmp_path / "plain.pt"
    plain.write_bytes(pickle.dumps(_RunsCode()))
    result = nmt("translate", plain, "-i", src)
    assert result.exit_code == 2
    assert not _RunsCode.marker.exists()


def test_checkpoint_from_another_model_is_refused(trained_run, tmp_path):
    state = torch.load(trained_run / "best.pt", weights_only=True)
    state["recipe"]["model"]["d_model"] = 64
    other = tmp_path / "other.pt"
    torch.save(state, other)
    src = tmp_path / "in.txt"
    src.write_text("hello\n")
    assert_user_error(nmt("translate", other, "-i", src), "weights do not match")


def test_translate_nbest_and_jsonl(trained_run):
    lines = ["The dog laughed.", "", "A cat saw the boy."]
    text = "\n".join(lines) + "\n"
    one_best = nmt("translate", trained_run, "--beam-size", "4", input=text).stdout.splitlines()
    result = nmt(
        "translate",
        trained_run,
        "--beam-size",
        "4",
        "--nbest",
        "3",
        "--output-format",
        "jsonl",
        input=text,
    )
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["id"] for r in records] == [0, 1, 2]
    assert [r["source"] for r in records] == lines
    assert records[1]["nbest"] == [{"translation": "", "score": 0.0, "norm_score": 0.0}]
    for record, best in zip(records, one_best):
        hyps = record["nbest"]
        assert hyps[0]["translation"] == best
        scores = [h["norm_score"] for h in hyps]
        assert scores == sorted(scores, reverse=True)
    assert len(records[0]["nbest"]) == 3
    assert len({h["translation"] for h in records[0]["nbest"]}) > 1
    # Text n-best: index, score, translation; N lines per non-empty input line.
    plain = nmt(
        "translate", trained_run, "--beam-size", "4", "--nbest", "3", input=text
    ).stdout.splitlines()
    assert [line.split("\t")[0] for line in plain] == ["0", "0", "0", "1", "2", "2", "2"]
    assert_user_error(
        nmt("translate", trained_run, "--output-format", "xml", input=text),
        "unknown --output-format",
    )


def test_translate_sampling_through_cli_is_seeded(trained_run):
    text = "The dog laughed.\nA cat saw the boy.\n"
    args = ["translate", trained_run, "--sample", "--top-p", "0.9", "--temperature", "1.5"]
    a = nmt(*args, "--seed", "7", input=text)
    b = nmt(*args, "--seed", "7", input=text)
    assert a.exit_code == 0, a.output
    assert a.stdout == b.stdout and len(a.stdout.splitlines()) == 2
    assert_user_error(nmt(*args, "--top-p", "0", input=text), "decode.top_p")


LINES = ["The dog laughed.", "", "A cat saw the boy near the old house.", "Two men ran."]


def test_compile_option_translates_as_the_eager_steps_do(trained_run, tmp_path):
    """`nmt translate --compile`: the same translations as without it (beam search in
    batches of two, the trained toy model)."""
    text = "\n".join(LINES) + "\n"
    args = ("translate", str(trained_run), "--beam-size", "3", "--batch-size", "2")
    eager = nmt(*args, input=text)
    compiled = nmt(*args, "--compile", input=text)
    assert eager.exit_code == compiled.exit_code == 0, compiled.output
    assert compiled.stdout == eager.stdout


def test_compile_with_int8_is_refused(trained_run):
    args = ("translate", str(trained_run), "--compile", "--quantize", "int8")
    assert_user_error(nmt(*args, input="A dog.\n"), "--compile", "--quantize int8")


def test_compile_is_refused_where_there_is_no_compiled_step():
    from nmt.config import ModelConfig
    from nmt.models.builder import build_model

    rnn = build_model(ModelConfig(arch="rnn", hidden_size=16, d_model=8), 12, 12, True)
    assert not rnn.compile_decoding()
