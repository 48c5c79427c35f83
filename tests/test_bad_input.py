"""Bad input that the other test files do not already cover: huge lines, mismatched
tokenizers, and interrupting a translation."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from conftest import tiny_recipe, translate_process
from test_cli import assert_user_error, nmt

from nmt import config
from nmt.data.preprocess import preprocess

HUGE = " ".join(["the red dog saw a cat"] * 4000)[:100_000]  # a 100,000-character line


def test_huge_line_in_training_data_is_filtered_and_counted(tmp_path, small_corpus):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for split in ("train", "valid"):
        for lang in ("en", "de"):
            text = (small_corpus / f"{split}.{lang}").read_text(encoding="utf-8")
            if split == "train":
                text = text + HUGE + "\n"  # the last pair: a huge source... and target
            (corpus / f"{split}.{lang}").write_text(text, encoding="utf-8")
    recipe = config.from_dict(tiny_recipe(corpus, tmp_path / "run"))
    stats = preprocess(recipe)["filter"]
    assert stats["too_long"] == 1
    assert stats["kept"] == stats["read"] - 1


def test_huge_line_in_translation_input_keeps_line_count(trained_run, tmp_path):
    src = tmp_path / "in.txt"
    src.write_text(f"The dog laughed.\n{HUGE}\n\nA cat.\n", encoding="utf-8")
    out = tmp_path / "out.txt"
    result = nmt("translate", trained_run, "--greedy", "-i", src, "-o", out)
    assert result.exit_code == 0, result.output
    assert "was cut to" in result.stderr
    assert len(out.read_text(encoding="utf-8").split("\n")) == 5  # 4 lines + final newline
    assert out.read_text(encoding="utf-8").split("\n")[2] == ""


def test_checkpoint_with_a_mismatched_tokenizer_is_refused(trained_run, tmp_path):
    """Tokenizer models swapped for ones of another vocabulary size: the embeddings no longer
    fit, and the error says so instead of translating garbage."""
    state = torch.load(trained_run / "best.pt", weights_only=True)
    other = tmp_path / "other"
    recipe = config.from_dict(
        tiny_recipe(
            Path(state["recipe"]["data"]["train"]).parent, other, tokenizer={"vocab_size": 100}
        )
    )
    preprocess(recipe)
    proto = (recipe.prepared_dir / "spm.model").read_bytes()
    state["tokenizers"] = {"src": proto, "tgt": proto}
    bad = tmp_path / "mismatch.pt"
    torch.save(state, bad)
    src = tmp_path / "in.txt"
    src.write_text("The dog laughed.\n")
    assert_user_error(
        nmt("translate", bad, "-i", src), "SentencePiece models have 100/100 pieces", "120/120"
    )


def test_interrupted_translation_leaves_only_complete_lines(trained_run, tmp_path):
    """Ctrl-C midway: exit 130, no traceback, and the output holds only whole lines.

    stdin stays open with 2500 lines written, so the run cannot finish before the interrupt
    (with a file as input, a fast run once did): buffers of 1000 lines are translated and
    written, then the third waits for lines that never come.
    """
    lines = [f"The dog saw {n % 7} cats near the red house." for n in range(2500)]
    process = translate_process(trained_run)
    try:
        process.stdin.write("".join(line + "\n" for line in lines).encode())
        process.stdin.flush()
        ready, _, _ = select.select([process.stdout], [], [], 120)
        assert ready, "no output within 120 s"
        first = process.stdout.read1(1)  # the first buffer is being written: interrupt now
        assert first
        time.sleep(0.2)
        process.send_signal(signal.SIGINT)
        rest, err = process.communicate(timeout=60)
        err = err.decode()
    finally:
        process.kill()
    out = (first + rest).decode("utf-8")
    assert process.returncode == 130, err
    assert "Traceback" not in err
    assert out.endswith("\n")
    assert 0 < out.count("\n") <= 2000


def test_interrupt_test_passes_when_the_suite_ignores_sigint():
    """A shell starts background jobs (`bash .ci/run &`, `nohup`) with SIGINT ignored, and
    children inherit that: the interrupt test once waited forever for a child that ignored the
    signal. Run it that way, in a pytest of its own."""
    root = Path(__file__).resolve().parent.parent
    test = "tests/test_bad_input.py::test_interrupted_translation_leaves_only_complete_lines"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    assert result.returncode == 0, result.stdout[-2000:]
    assert "1 passed" in result.stdout
