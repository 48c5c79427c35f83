"""bench/gpu_check.py --smoke: every part of the prepared GPU check runs on the CPU at tiny
sizes, so the check keeps working as the code changes before a GPU is lent."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_part_of_the_gpu_check_runs_in_smoke_mode(tmp_path):
    result = subprocess.run(
        [sys.executable, "bench/gpu_check.py", "--smoke", "--out", str(tmp_path), "--slack", "3"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    parts = report["parts"]
    expected = [
        "versions",
        "data",
        "correctness",
        "profile",
        "quality",
        "decoding",
        "throughput",
        "nccl",
    ]
    assert list(parts) == expected
    for name, record in parts.items():
        assert record["status"] == "ok", (name, record)
    assert parts["throughput"]["result"]["rows"][0]["tgt_tokens_per_s"] > 0
    assert parts["throughput"]["result"]["rows"][0]["flops_per_tgt_token"] > 0
    profile = parts["profile"]["result"]
    assert profile["staged_ms_per_update"] > 0 and profile["loop_ms_per_update"] > 0
    assert profile["top_host_ops"] and profile["host_ops_per_update"] > 0
    quality = parts["quality"]["result"]
    assert quality["steps"] == 20 and quality["test_bleu"] is not None
    assert {r["search"] for r in parts["decoding"]["result"]["rows"]} == {"greedy", "beam 5"}
    assert parts["nccl"]["result"]["validations"] == 1
    text = (tmp_path / "report.md").read_text()
    assert "Training throughput" in text and "Time to quality" in text and "Decoding" in text


def test_the_gpu_sweep_trains_every_variant_in_smoke_mode(tmp_path):
    result = subprocess.run(
        [sys.executable, "bench/gpu_sweep.py", "--smoke", "--out", str(tmp_path), "--jobs", "2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads((tmp_path / "report.json").read_text())["rows"]
    assert [r["variant"] for r in rows] == ["baseline", "dropout0.1"]
    for row in rows:
        assert row["status"] == "ok", row
        assert row["steps"] == 20 and row["best_valid_bleu"] is not None
        assert [step for step, _ in row["curve"]] == [10, 20]
    assert rows[1]["overrides"] == ["model.dropout=0.1"]
    assert (tmp_path / "sweep.tsv").read_text().count("\n") == 3
