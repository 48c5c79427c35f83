"""`nmt score` prints the numbers sacrebleu's own command line prints on the same files."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nmt.cli import app
from nmt.errors import NmtError
from nmt.score import score_files

runner = CliRunner()


def sacrebleu_cli(refs: list[Path], hyp: Path, *options: str) -> list[dict]:
    """Run sacrebleu's CLI; with several metrics it prints a JSON list, with one a JSON object."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "sacrebleu",
            *map(str, refs),
            "-i",
            str(hyp),
            "-f",
            "json",
            *options,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    parsed = json.loads(out)
    return parsed if isinstance(parsed, list) else [parsed]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A noisy system output and two references (with trailing spaces and CRLF in places)."""
    rng = random.Random(7)
    words = "the a dog cat saw chased big small red house garden Tree under near quickly".split()
    refs1, refs2, hyps = [], [], []
    for _ in range(60):
        ref = [rng.choice(words) for _ in range(rng.randint(3, 12))]
        hyp = [w if rng.random() < 0.7 else rng.choice(words) for w in ref]
        if rng.random() < 0.3:
            hyp = hyp[:-1]
        ref2 = list(reversed(ref)) if rng.random() < 0.5 else ref
        refs1.append(" ".join(ref).capitalize() + ".")
        refs2.append(" ".join(ref2).capitalize() + ".")
        hyps.append(" ".join(hyp).capitalize() + ("." if rng.random() < 0.8 else " . "))
    folder = tmp_path_factory.mktemp("score")
    paths = {"hyp": folder / "hyp.txt", "ref": folder / "ref.txt", "ref2": folder / "ref2.txt"}
    paths["hyp"].write_text("\n".join(hyps) + "\n", encoding="utf-8")
    paths["ref"].write_bytes(("\r\n".join(refs1) + "\r\n").encode())
    paths["ref2"].write_text("\n".join(refs2) + "\n", encoding="utf-8")
    return paths


@pytest.mark.parametrize(
    ("refs", "options"),
    [
        (["ref"], []),
        (["ref", "ref2"], []),
        # sacrebleu's -lc is BLEU's only; ours lowercases chrF too (TER ignores case anyway).
        (["ref"], ["-lc", "--chrf-lowercase"]),
    ],
)
def test_scores_equal_sacrebleu_cli(files, refs, options):
    ref_paths = [files[r] for r in refs]
    expected = sacrebleu_cli(ref_paths, files["hyp"], "-m", "bleu", "chrf", "ter", *options)
    ours_options = ["-lc"] if "-lc" in options else []
    args = ["score", str(files["hyp"]), "--metrics", "bleu,chrf,ter", "--json", *ours_options]
    for r in ref_paths:
        args += ["-r", str(r)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    ours = json.loads(result.stdout)
    assert [o["name"] for o in ours] == [e["name"] for e in expected]
    for o, e in zip(ours, expected):
        assert o["score"] == pytest.approx(e["score"], abs=0.05)  # sacrebleu rounds its JSON
        assert o["signature"] == e["signature"]


def test_text_output_carries_the_signature(files):
    result = runner.invoke(app, ["score", str(files["hyp"]), "-r", str(files["ref"])])
    assert result.exit_code == 0
    [line] = result.stdout.splitlines()
    assert line.startswith("BLEU|nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:")
    expected = sacrebleu_cli([files["ref"]], files["hyp"])[0]["score"]
    assert f"= {expected:.2f}" in line


def test_tokenize_option(files):
    ours = score_files(files["hyp"], [files["ref"]], ["bleu"], tokenize="char")[0]
    expected = sacrebleu_cli([files["ref"]], files["hyp"], "--tokenize", "char")[0]
    assert ours.score == pytest.approx(expected["score"], abs=0.05)
    assert "tok:char" in ours.signature


def test_line_count_mismatch_and_unknown_metric(files, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("one line\n")
    with pytest.raises(NmtError, match=r"ref\.txt has 60 lines but .*short\.txt has 1"):
        score_files(short, [files["ref"]])
    result = runner.invoke(
        app, ["score", str(files["hyp"]), "-r", str(files["ref"]), "-m", "bleu,meteor"]
    )
    assert result.exit_code == 2
    assert "unknown metric 'meteor'" in result.stderr
    result = runner.invoke(app, ["score", str(tmp_path / "missing"), "-r", str(files["ref"])])
    assert result.exit_code == 2
    assert "file not found" in result.stderr


def sacrebleu_paired_table(refs: list[Path], systems: list[Path], test: str) -> list[list[float]]:
    """The numbers in the rows of sacrebleu's paired-test table, one list per system:
    bs: [score, mean, ci] per metric, then the p-values; ar: the scores, then the p-values."""
    import re

    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "sacrebleu",
            *map(str, refs),
            "-i",
            *map(str, systems),
            "-m",
            "bleu",
            "chrf",
            f"--paired-{test}",
            "-f",
            "text",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows: list[list[float]] = []
    for line in out.splitlines():
        if not line.startswith("│") or "System" in line:
            continue
        numbers = [float(x) for x in re.findall(r"\d+\.\d+", line)]
        if "p =" in line:
            rows[-1] += numbers
        elif numbers:
            rows.append(numbers)
    return rows


@pytest.mark.parametrize("test", ["bs", "ar"])
def test_compare_equals_sacrebleu_paired_test(files, tmp_path, test):
    # A second system: the hypotheses with every third line replaced by its reference.
    hyps = files["hyp"].read_text(encoding="utf-8").splitlines()
    refs = files["ref2"].read_text(encoding="utf-8").splitlines()
    better = tmp_path / "better.txt"
    lines = [r if i % 3 == 0 else h for i, (h, r) in enumerate(zip(hyps, refs))]
    better.write_text("\n".join(lines) + "\n")
    expected = sacrebleu_paired_table([files["ref2"]], [files["hyp"], better], test)
    result = runner.invoke(
        app,
        [
            "score",
            str(files["hyp"]),
            "-r",
            str(files["ref2"]),
            "-m",
            "bleu,chrf",
            "--compare",
            str(better),
            "--test",
            test,
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    by = {(r["metric"], r["system"]): r for r in json.loads(result.stdout)["results"]}
    width = 3 if test == "bs" else 1  # bs shows score (mean ± ci), ar the score alone
    for row, system in zip(expected, [files["hyp"], better]):
        ours = []
        for metric in ("BLEU", "chrF2"):
            r = by[(metric, str(system))]
            ours += [round(r["score"], 1)]
            if width == 3:
                ours += [round(r["mean"], 1), round(r["ci"], 1)]
        assert ours == pytest.approx(row[: 2 * width], abs=0.051)
        p_values = [by[(m, str(system))]["p_value"] for m in ("BLEU", "chrF2")]
        if system == better:
            assert [round(p, 4) for p in p_values] == row[2 * width :]
            assert min(p_values) < 0.05  # a third of the lines made perfect: a real difference
        else:
            assert p_values == [None, None] and len(row) == 2 * width


def test_chrf_plus_plus_equals_sacrebleu(files):
    expected = sacrebleu_cli([files["ref"]], files["hyp"], "-m", "chrf", "--chrf-word-order", "2")[
        0
    ]
    ours = score_files(files["hyp"], [files["ref"]], ["chrf++"])[0]
    assert ours.score == pytest.approx(expected["score"], abs=0.05)
    assert ours.signature == expected["signature"]
    assert ours.name == "chrF2++"
