"""Translator batching: batch limits are honoured and do not change the translations."""

from __future__ import annotations

from nmt.translate import Translator

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
    decode_batch = translator._decode_batch

    def recording(batch, nbest):
        sizes.append(len(batch))
        return decode_batch(batch, nbest)

    translator._decode_batch = recording
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
