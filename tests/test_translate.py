"""Translator batching: batch limits are honoured and do not change the translations; stdin is
translated buffer by buffer, so output starts before the input ends."""

from __future__ import annotations

import select
import subprocess

from conftest import translate_process

from nmt.decoding.translator import Translator

LINES = [
    "The dog laughed.",
    "",
    "A cat saw the boy near the old house.",
    "The girl ran.",
    "   ",
    "Two men and a small dog saw the red car.",
    "A boy ate.",
]


def batches_of(translator: Translator, lines: list[str]) -> tuple[list[str], list[int]]:
    sizes: list[int] = []
    search = translator.engine.search

    def recording(batch, *args):
        sizes.append(len(batch))
        return search(batch, *args)

    translator.engine.search = recording
    return translator.translate(lines), sizes


def test_batch_limits_are_honoured_and_do_not_change_output(trained_run):
    default, sizes = batches_of(Translator.load(trained_run, device="cpu"), LINES)
    assert sizes == [5]  # the five non-empty lines fit in one batch of 4096 tokens
    assert len(default) == len(LINES) and default[1] == "" and default[4] == ""
    for overrides, expected in (
        ({"batch_size": 1}, [1, 1, 1, 1, 1]),
        ({"batch_size": 2}, [2, 2, 1]),
        ({"batch_tokens": 1}, [1, 1, 1, 1, 1]),
    ):
        outputs, sizes = batches_of(Translator.load(trained_run, device="cpu", **overrides), LINES)
        assert sizes == expected, overrides
        assert outputs == default, overrides


def test_stdin_output_starts_before_the_input_ends(trained_run):
    """`producer | nmt translate RUN` prints the first 1000-line buffer while stdin is still
    open, then the rest in input order (empty and whitespace-only lines included)."""
    first_buffer = [f"The dog saw {n % 7} cats near the red house." for n in range(1000)]
    tail = ["A cat saw the boy.", "", "   ", "The girl ran."]
    process = translate_process(trained_run, stderr=subprocess.DEVNULL)
    try:
        process.stdin.write("".join(line + "\n" for line in first_buffer).encode())
        process.stdin.flush()
        ready, _, _ = select.select([process.stdout], [], [], 120)
        assert ready, "no output within 120 s while stdin was still open"
        first = process.stdout.readline()
        process.stdin.write("".join(line + "\n" for line in tail).encode())
        process.stdin.close()
        rest = process.stdout.read()
        assert process.wait(timeout=120) == 0
    finally:
        process.kill()
    out = (first + rest).decode("utf-8").split("\n")
    assert out[-1] == ""  # the output ends with a newline
    expected = Translator.load(trained_run, method="greedy").translate(first_buffer + tail)
    assert out[:-1] == expected
    assert out[-4:-2] == ["", ""]  # the empty and the whitespace-only line


def test_threads_option_sets_the_decoding_threads(trained_run):
    """--threads on `nmt translate` (and `nmt serve`, the same helper) sets torch's threads
    before the model loads; the output does not change with it."""
    import torch
    from test_cli import assert_user_error, nmt

    before = torch.get_num_threads()
    try:
        default = nmt("-q", "translate", trained_run, input="The dog laughed.\n")
        one = nmt("-q", "translate", trained_run, "--threads", "1", input="The dog laughed.\n")
        assert one.exit_code == 0, one.output
        assert torch.get_num_threads() == 1
        assert one.stdout == default.stdout
    finally:
        torch.set_num_threads(before)
    assert_user_error(nmt("translate", trained_run, "--threads", "-1"), "--threads must be 0")
    assert "--threads" in nmt("serve", "--help").stdout
