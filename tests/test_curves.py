"""`nmt curves`: validation BLEU read from runs' logs, at given updates and minutes, as a table and
a picture; checked against logs written by hand and against a real run's log."""

from __future__ import annotations

import json
import sys

from test_cli import assert_user_error, nmt

from nmt.training import curves, runlog

# (step, minutes since the start, BLEU) of each validation of a made-up run.
VALIDATIONS = [(250, 10.0, 12.5), (500, 21.0, 20.25), (750, 33.0, 24.0), (1000, 44.5, 24.0)]


def write_log(path, validations=VALIDATIONS, averaged=23.75):
    records = [{"kind": "start", "step": 0}]
    for step, minutes, bleu in validations:
        records.append({"kind": "train", "step": step, "loss": 3.0})
        records.append({"kind": "valid", "step": step, "valid_bleu": bleu, "elapsed": minutes * 60})
    if averaged is not None:
        records.append({"kind": "averaged", "step": validations[-1][0], "valid_bleu": averaged})
    records.append({"kind": "end", "steps": validations[-1][0]})
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_values_at_steps_and_minutes_are_the_last_validation_at_or_before(tmp_path):
    curve = curves.read_curve(write_log(tmp_path / "a.jsonl"))
    assert curve.label == "a"
    assert curve.steps == [250, 500, 750, 1000]
    assert curve.minutes == [10.0, 21.0, 33.0, 44.5]
    assert curve.averaged_bleu == 23.75
    assert curve.at_step(500) == (500, 20.25)
    assert curve.at_step(749) == (500, 20.25)
    assert curve.at_step(100) is None
    assert curve.at_minutes(30) == (21.0, 20.25)
    assert curve.at_minutes(60) == (44.5, 24.0)


def test_validations_without_elapsed_time_are_left_out(tmp_path):
    log = write_log(tmp_path / "old.jsonl")
    records = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
    del records[2]["elapsed"]  # the first validation, as logs before `elapsed` wrote it
    log.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    curve = curves.read_curve(log)
    assert curve.steps == [500, 750, 1000]
    assert curve.minutes == [21.0, 33.0, 44.5]


def test_table_names_where_each_value_was_taken(tmp_path):
    a = curves.read_curve(f"first={write_log(tmp_path / 'a.jsonl')}")
    b = curves.read_curve(write_log(tmp_path / "b.jsonl", VALIDATIONS[:2], averaged=None))
    rows = curves.table([a, b], steps=[500, 800], minutes=[30]).splitlines()
    assert rows[0] == (
        "| run | step 500 | step 800 | 30 min | best (step) | averaged | last: step, min, BLEU |"
    )
    # The best of two equal BLEUs is the earlier validation.
    assert (
        rows[2]
        == "| first | 20.25 | 24.00 (750) | 20.25 (21) | 24.00 (750) | 23.75 | 1000, 44, 24.00 |"
    )
    assert rows[3] == "| b | 20.25 | 20.25 (500) | 20.25 (21) | 20.25 (500) | – | 500, 21, 20.25 |"


def test_a_real_run_folder_and_its_picture(trained_run, tmp_path):
    logged = runlog.read(trained_run, "valid")
    png = tmp_path / "pictures" / "curves.png"
    result = nmt("curves", f"tiny={trained_run}", "--at-step", str(logged[0]["step"]), "-o", png)
    assert result.exit_code == 0, result.output
    row = result.stdout.splitlines()[2]
    assert row.startswith(f"| tiny | {logged[0]['valid_bleu']:.2f} | ")
    assert row.endswith(
        f" | {logged[-1]['step']}, {logged[-1]['elapsed'] / 60:.0f}, "
        f"{logged[-1]['valid_bleu']:.2f} |"
    )
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 10_000


def test_mistakes_end_in_one_line(tmp_path, monkeypatch):
    assert_user_error(nmt("curves", tmp_path / "missing"), "no such run folder or log file")
    assert_user_error(nmt("curves", tmp_path), "has no log.jsonl")
    log = write_log(tmp_path / "a.jsonl")
    assert_user_error(nmt("curves", log, "--at-minutes", "1h"), "--at-minutes expects")
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import now fails
    png = tmp_path / "c.png"
    assert_user_error(nmt("curves", log, "-o", png), "nmt curves -o needs matplotlib")
    assert not png.exists()
