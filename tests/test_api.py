"""The Python API (`from nmt import Translator, score_lines`) used as a library, in process:
the Python API guide's example runs, and the functions agree with the CLI and with sacrebleu."""

from __future__ import annotations

import contextlib
import io
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from sacrebleu.metrics import BLEU, CHRF
from test_cli import nmt

import nmt as api

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _one_thread():
    # The tiny model decodes faster on one thread; conftest puts the count back afterwards.
    torch.set_num_threads(1)


def test_import_nmt_loads_no_torch():
    code = "import sys, nmt; print('torch' in sys.modules, nmt.__version__)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert result.stdout.split() == ["False", api.__version__], result.stderr


def test_translate_equals_nmt_translate(trained_run, small_corpus):
    lines = (small_corpus / "test.en").read_text(encoding="utf-8").splitlines()[:10]
    lines.insert(3, "")
    translator = api.Translator.load(trained_run, device="cpu")
    outputs = translator.translate(lines)
    assert len(outputs) == len(lines) and outputs[3] == ""
    assert all(isinstance(line, str) for line in outputs)
    cli = nmt("translate", trained_run, "--device", "cpu", input="\n".join(lines) + "\n")
    assert cli.exit_code == 0, cli.output
    assert cli.stdout.splitlines() == outputs
    # Decoding overrides are keywords of load().
    greedy = api.Translator.load(trained_run, device="cpu", method="greedy").translate(lines)
    cli = nmt(
        "translate", trained_run, "--greedy", "--device", "cpu", input="\n".join(lines) + "\n"
    )
    assert cli.stdout.splitlines() == greedy


def test_translate_nbest_with_scores_and_alignments(trained_run):
    translator = api.Translator.load(trained_run, device="cpu", beam_size=4)
    lines = ["The dog laughed.", "A cat saw the boy."]
    nbest = translator.translate_nbest(lines, nbest=3, alignment=True)
    assert [best[0].text for best in nbest] == translator.translate(lines)
    for line, best in zip(lines, nbest):
        assert len(best) == 3 and all(isinstance(t, api.Translation) for t in best)
        ranks = [t.norm_score for t in best]
        assert ranks == sorted(ranks, reverse=True)
        source_length = len(translator.src_tok.pieces(line)) + 1  # with </s>
        for t in best:
            assert len(t.alignment) == len(t.pieces) and t.pieces[-1] == "</s>"
            assert all(0 <= a < source_length for a in t.alignment)
            assert t.as_dict()["alignment"] == t.alignment
    with pytest.raises(api.NmtError, match="beam_size"):
        api.Translator.load(trained_run, device="cpu", beam_size=0)


@pytest.mark.parametrize(
    "settings, message",
    [
        (
            {"method": "Beam"},
            r"'decode.method' must be one of .* got 'Beam' \(did you mean 'beam'\?\)",
        ),
        ({"beam_size": "4"}, r"'decode.beam_size' must be an integer, got '4'"),
        ({"beam_sise": 4}, r"unknown decoding setting 'beam_sise' \(did you mean 'beam_size'\?\)"),
        ({"length_penalty": float("nan")}, r"decode.length_penalty"),
    ],
)
def test_bad_settings_are_one_clear_error(trained_run, settings, message):
    """Wrong settings never decode silently otherwise (method='Beam' used to give greedy
    search) nor fail deep inside with a TypeError."""
    with pytest.raises(api.NmtError, match=message):
        api.Translator.load(trained_run, device="cpu", **settings)


def test_bad_lines_and_nbest_are_one_clear_error(trained_run):
    translator = api.Translator.load(trained_run, device="cpu")
    with pytest.raises(api.NmtError, match="expected a list of lines, got one string"):
        translator.translate("The dog laughed.")  # would translate each character
    with pytest.raises(api.NmtError, match="input, line 2: expected a string, got NoneType"):
        translator.translate(["The dog laughed.", None])
    # JSON's "\ud800" escape reaches Python as a lone surrogate, which SentencePiece refused
    # with a TypeError.
    with pytest.raises(api.NmtError, match="line 1: holds a lone surrogate \\(U\\+D800\\)"):
        translator.translate(["A horse \ud800 found a table."])
    for nbest in (0, -1, 2.5, True):
        with pytest.raises(api.NmtError, match="nbest must be a whole number of at least 1"):
            translator.translate_nbest(["The dog laughed."], nbest=nbest)
    assert translator.translate([]) == []


def test_score_lines_equals_sacrebleu():
    hyps = ["the cat sat on the mat", "a dog barked loudly", "hello there"]
    refs = ["the cat sat on a mat", "the dog barked loudly", "hello there friend"]
    bleu, chrf = api.score_lines(hyps, [refs], metrics=["bleu", "chrf"])
    assert isinstance(bleu, api.Score)
    assert bleu.score == pytest.approx(BLEU().corpus_score(hyps, [refs]).score)
    assert chrf.score == pytest.approx(CHRF().corpus_score(hyps, [refs]).score)
    assert bleu.text.startswith("BLEU|") and "nrefs:1" in bleu.signature
    with pytest.raises(api.NmtError, match="reference 1 has 2 lines"):
        api.score_lines(hyps, [refs[:2]])


def test_the_guide_example_runs(trained_run, small_corpus):
    guide = (ROOT / "docs" / "python-api.md").read_text(encoding="utf-8")
    code = re.search(r"```python\n(.*?)```", guide, re.S).group(1)
    code = code.replace('"runs/quickstart"', repr(str(trained_run)))
    for lang in ("en", "de"):
        code = code.replace(f'"data/toy/test.{lang}"', repr(str(small_corpus / f"test.{lang}")))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "docs/python-api.md", "exec"), {})
    printed = out.getvalue().splitlines()
    assert len(printed) == 1 + 3 + 2, printed  # translations, 3-best, BLEU and chrF
    assert printed[-2].startswith("BLEU|") and printed[-1].startswith("chrF2|")
