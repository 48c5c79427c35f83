"""`nmt translate --prefix / --constraints / --input-format jsonl / --score-reference`: control
over translations from the command line, and the bad input a user will hit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import pytest
from test_cli import assert_user_error, nmt

from nmt.decoding.records import Request
from nmt.decoding.search import Hypothesis, length_penalty
from nmt.decoding.translator import Translator
from nmt.errors import NmtError

LINES = ["The dog saw the cat.", "A girl ran near the red house.", "", "The boy laughed."]


@pytest.fixture
def files(tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("".join(line + "\n" for line in LINES), encoding="utf-8")
    return tmp_path, src


def test_prefix_file_is_continued(trained_run, files):
    folder, src = files
    prefixes = folder / "prefix.txt"
    prefixes.write_text("Lor brakko\n\nAin\nLia herscha\n", encoding="utf-8")
    result = nmt("translate", trained_run, "-i", src, "--prefix", prefixes)
    assert result.exit_code == 0, result.output
    out = result.stdout.split("\n")[:-1]
    assert len(out) == 4 and out[2] == ""
    assert out[0].startswith("Lor brakko") and out[3].startswith("Lia herscha")
    # Greedy search continues prefixes too.
    greedy = nmt("translate", trained_run, "-i", src, "--prefix", prefixes, "--greedy")
    assert greedy.stdout.split("\n")[0].startswith("Lor brakko")


def test_constraints_appear_in_every_translation(trained_run, files):
    folder, src = files
    phrases = [["rotto"], ["lia türa", "weilo"], [], ["könik"]]
    constraints = folder / "constraints.jsonl"
    constraints.write_text("".join(json.dumps(p) + "\n" for p in phrases), encoding="utf-8")
    result = nmt("translate", trained_run, "-i", src, "--constraints", constraints, "--nbest", "3")
    assert result.exit_code == 0, result.output
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    by_line: dict[int, list[str]] = {}
    for index, _, text in rows:
        by_line.setdefault(int(index), []).append(text)
    for index, wanted in enumerate(phrases):
        for text in by_line[index]:
            assert all(p in text for p in wanted), (text, wanted)
    # The same through JSONL input.
    jsonl = folder / "in.jsonl"
    jsonl.write_text(
        "".join(
            json.dumps({"source": s, "constraints": p}, ensure_ascii=False) + "\n"
            for s, p in zip(LINES, phrases)
        ),
        encoding="utf-8",
    )
    again = nmt("translate", trained_run, "-i", jsonl, "--input-format", "jsonl", "--nbest", "3")
    assert again.exit_code == 0 and again.stdout == result.stdout


def test_reference_scores_equal_the_beam_s_own_scores(trained_run, files):
    """Forced decoding of the beam's own outputs (their token ids: a weak model's outputs are
    not always SentencePiece's segmentation of their text) gives the scores the beam reported,
    its n-best lists included."""
    translator = Translator.load(trained_run)
    sources = [line for line in LINES if line]
    nbest = translator.translate_nbest(sources, nbest=3, alignment=True)
    src_ids, hyp_ids, expected = [], [], []
    for source, translations in zip(sources, nbest):
        for t in translations:
            src_ids.append(translator.src_tok.encode([source])[0])
            hyp_ids.append([translator.tgt_tok.sp.piece_to_id(p) for p in t.pieces[:-1]])
            expected.append(t.score)
    scores = translator.score_ids(src_ids, hyp_ids)
    for s, want, hyp in zip(scores, expected, hyp_ids):
        assert s.tokens == len(hyp) + 1
        assert s.score == pytest.approx(want, abs=1e-4)
        assert s.per_token == pytest.approx(want / s.tokens, abs=1e-5)
    # The CLI prints sum and mean per line, one line per input line.
    folder, src = files
    refs = folder / "refs.txt"
    refs.write_text("".join(r + "\n" for r in ["Lor brakko.", "Ain", "", "Lor"]))
    result = nmt("translate", trained_run, "-i", src, "--score-reference", refs)
    assert result.exit_code == 0, result.output
    lines = [line.split("\t") for line in result.stdout.splitlines()]
    assert len(lines) == 4 and all(float(total) <= 0 for total, _ in lines)
    # Search options have nothing to do with given translations: refused, by name.
    assert_user_error(
        nmt(
            "translate",
            trained_run,
            "-i",
            src,
            "--score-reference",
            refs,
            "--greedy",
            "--beam-size",
            "3",
        ),
        "takes no search options (got --greedy, --beam-size)",
    )
    # A reference longer than the model allows: its line, not a traceback.
    long = folder / "long.txt"
    long.write_text("Lor brakko.\n" + "Lor " * 1200 + "\n" + "Ain\n" * 2)
    assert_user_error(
        nmt("translate", trained_run, "-i", src, "--score-reference", long),
        "--score-reference, line 2: the reference has",
    )


def test_every_output_scores_as_its_text_does(trained_run, monkeypatch):
    """An output's score is the score of its text given as a reference, n-best lists included,
    even when the search ends on another segmentation of that text: a lone "▁" before a word
    (which decodes to a double space) or a word spelt in smaller pieces. Such hypotheses come
    out as the text's own segmentation, scored by forced decoding, without the double space,
    and two that become one merge."""
    translator = Translator.load(trained_run)
    sources = [line for line in LINES if line]
    nbest = translator.translate_nbest(sources, nbest=3)
    flat = [(s, t) for s, ts in zip(sources, nbest) for t in ts]
    scores = translator.score_references([s for s, _ in flat], [t.text for _, t in flat])
    for (_, t), ref in zip(flat, scores):
        assert ref.score == pytest.approx(t.score, abs=1e-4)

    sp = translator.tgt_tok.sp
    words = [
        sp.id_to_piece(i)
        for i in range(len(sp))
        if sp.id_to_piece(i).startswith("▁") and len(sp.id_to_piece(i)) >= 3
    ]
    first, word = words[0], next(w for w in words[1:] if all(sp.piece_to_id(c) for c in w[1:]))
    space = sp.piece_to_id("▁")
    spaced = [sp.piece_to_id(first), space, sp.piece_to_id(word)]  # "A  b": a double space
    split = [sp.piece_to_id(first), space] + [sp.piece_to_id(c) for c in word[1:]]
    text = f"{first[1:]} {word[1:]}"
    assert translator.tgt_tok.decode([spaced])[0] == f"{first[1:]}  {word[1:]}"
    assert translator.tgt_tok.decode([split])[0] == text != split

    def odd_search(batch, nbest, decode, guide=None):
        return [[Hypothesis(spaced, -1.0, -1.0), Hypothesis(split, -2.0, -2.0)] for _ in batch]

    source = "The dog saw the cat."
    monkeypatch.setattr(translator.engine, "search", odd_search)
    (outputs,) = translator.translate_nbest([source], nbest=2)
    monkeypatch.undo()
    (want,) = translator.score_references([source], [text])
    assert [t.text for t in outputs] == [text]  # one text: the two merged
    assert outputs[0].score == pytest.approx(want.score, abs=1e-4)
    assert outputs[0].norm_score == pytest.approx(
        want.score / length_penalty(want.tokens, translator.decode.length_penalty), abs=1e-4
    )


def test_library_requests_match_the_cli(trained_run):
    translator = Translator.load(trained_run)
    got = [t[0].text for _, t in translator.stream_nbest([Request(LINES[0], prefix="Lor")])]
    assert got[0].startswith("Lor")


def test_bad_control_input_is_one_clear_line(trained_run, files):
    folder, src = files
    short = folder / "short.txt"
    short.write_text("Lor\n")
    assert_user_error(
        nmt("translate", trained_run, "-i", src, "--prefix", short), "--prefix ended at line 1"
    )
    bad_json = folder / "bad.jsonl"
    bad_json.write_text('["ok"]\nnot json\n[]\n[]\n')
    assert_user_error(
        nmt("translate", trained_run, "-i", src, "--constraints", bad_json),
        "--constraints, line 2: expected a JSON list of phrases",
    )
    empty_phrase = folder / "empty.jsonl"
    empty_phrase.write_text('[""]\n[]\n[]\n[]\n')
    assert_user_error(
        nmt("translate", trained_run, "-i", src, "--constraints", empty_phrase),
        "line 1: an empty constraint phrase",
    )
    fine = folder / "fine.jsonl"
    fine.write_text('["Lor"]\n[]\n[]\n[]\n')
    assert_user_error(
        nmt("translate", trained_run, "-i", src, "--constraints", fine, "--greedy"),
        "constraints need beam search",
    )
    long = folder / "long.jsonl"
    long.write_text(json.dumps([" ".join(["brakko"] * 1100)]) + "\n[]\n[]\n[]\n")
    assert_user_error(
        nmt("translate", trained_run, "-i", src, "--constraints", long),
        "input, line 1: its prefix and constraints need",
        "more than the model's 1023",
    )
    jsonl = folder / "in.jsonl"
    jsonl.write_text('{"source": "a", "colour": "red"}\n')
    assert_user_error(
        nmt("translate", trained_run, "-i", jsonl, "--input-format", "jsonl"),
        "input, line 1: unknown field(s) colour",
    )
    assert_user_error(
        nmt("translate", trained_run, "-i", src, "--prefix", folder / "missing.txt"),
        "--prefix file not found",
    )
    for flag in ("-i", "--constraints"):
        args = ["-i", src, flag, folder] if flag != "-i" else ["-i", folder]
        assert_user_error(
            nmt("translate", trained_run, *args),
            f"{'input' if flag == '-i' else flag}: expected a text file, found a folder",
        )


def test_errors_name_the_line_of_the_whole_input(trained_run):
    """Lines are decoded in buffers; an error names the line's place in the whole input."""
    translator = Translator.load(trained_run, device="cpu")
    requests = [Request("The dog saw the cat.")] * 4 + [Request("A cat.", constraints=("",))]
    with pytest.raises(NmtError, match="input, line 5: an empty constraint phrase"):
        list(translator.stream_nbest(requests, buffer_lines=2))


def test_input_and_constraints_may_come_from_pipes(trained_run, files, tmp_path):
    """/dev/stdin, a named pipe or <(command) is read like a file, not refused as missing."""
    _, src = files
    fifo = tmp_path / "constraints.fifo"
    os.mkfifo(fifo)

    def feed():
        with open(fifo, "w", encoding="utf-8") as f:
            f.write('["Lor"]\n[]\n[]\n[]\n')

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    result = nmt("translate", trained_run, "-i", src, "--constraints", fifo)
    writer.join(timeout=30)
    assert result.exit_code == 0, result.output
    assert "Lor" in result.stdout.splitlines()[0]
    # /dev/stdin is the process's own standard input: a real process, not the test runner's.
    piped = subprocess.run(
        [sys.executable, "-m", "nmt", "-q", "translate", str(trained_run), "-i", "/dev/stdin"],
        input="The dog saw the cat.\nThe boy laughed.\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert piped.returncode == 0, piped.stderr
    assert len(piped.stdout.splitlines()) == 2


def test_text_the_vocabulary_cannot_spell_is_refused_not_turned_into_unknowns(trained_run, files):
    """A prefix or constraint with characters the target SentencePiece model lacks would be
    forced as ⁇: refused, naming the line and the characters, before anything is decoded."""
    folder, src = files
    translator = Translator.load(trained_run, device="cpu")
    assert translator.tgt_tok.unknown_characters("Lor ☃ brakko ☃ Ω") == ["☃", "Ω"]
    assert translator.tgt_tok.unknown_characters("Lor brakko") == []
    prefixes = folder / "prefixes.txt"
    prefixes.write_text("Lor\n\n\nLor ☃\n", encoding="utf-8")
    assert_user_error(
        nmt("translate", trained_run, "-i", src, "--prefix", prefixes),
        "input, line 4: the prefix 'Lor ☃' holds characters the target vocabulary lacks (☃)",
    )
    with pytest.raises(NmtError, match=r"line 2: the constraint 'Ω' holds characters"):
        translator.translate_nbest(["A dog.", "A cat."], constraints=[["Lor"], ["Ω"]])
