"""bench/gpu_check.py --smoke: every part of the prepared GPU check runs on the CPU at tiny
sizes, so the check keeps working as the code changes before a GPU is lent."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from nmt import config
from nmt.errors import NmtError

ROOT = Path(__file__).resolve().parent.parent


def _smoke(script: str, out: Path, *args: str, timeout: int) -> None:
    """Runs a bench script with --smoke, writing into `out`; it must succeed."""
    result = subprocess.run(
        [sys.executable, f"bench/{script}", "--smoke", "--out", str(out), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stderr[-3000:]


def test_every_part_of_the_gpu_check_runs_in_smoke_mode(tmp_path):
    _smoke("gpu_check.py", tmp_path, "--slack", "3", timeout=540)
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
    # The peer (transformers' MarianMT, same sizes, same batches), where transformers is
    # installed (the test extras install it).
    peer = parts["throughput"]["result"]["rows"][1]
    assert "peer" in peer["model"]
    if "error" not in peer or "transformers" not in peer["error"]:
        assert peer["tgt_tokens_per_s"] > 0 and peer["flops_per_tgt_token"] > 0
    profiles = parts["profile"]["result"]
    assert list(profiles) == [
        "multi30k_recipe",
        "multi30k_recipe_pure_bf16",
        "multi30k_recipe_compiled",
    ]
    bf16 = profiles.pop("multi30k_recipe_pure_bf16")
    assert bf16["tgt_tokens_per_s"] > 0 and bf16["flops_per_tgt_token"] > 0, bf16
    for profile in profiles.values():
        assert profile["staged_ms_per_update"] > 0 and profile["loop_ms_per_update"] > 0
        assert profile["top_host_ops"] and profile["host_ops_per_update"] > 0
        assert profile["tgt_tokens_per_s"] > 0 and profile["flops_per_tgt_token"] > 0
    # The compiled step really ran compiled, as one graph (no graph breaks, no recompiles).
    assert profiles["multi30k_recipe_compiled"]["compiled"]
    assert profiles["multi30k_recipe_compiled"]["compiled_graphs"] == 1
    quality = parts["quality"]["result"]
    assert quality["steps"] == 20 and quality["test_bleu"] is not None
    assert {r["search"] for r in parts["decoding"]["result"]["rows"]} == {"greedy", "beam 5"}
    assert parts["nccl"]["result"]["validations"] == 1
    text = (tmp_path / "report.md").read_text()
    assert "Training throughput" in text and "Time to quality" in text and "Decoding" in text
    assert "One update, profiled" in text


def test_the_gpu_sweep_trains_every_variant_in_smoke_mode(tmp_path):
    _smoke("gpu_sweep.py", tmp_path, "--jobs", "2", timeout=300)
    rows = json.loads((tmp_path / "report.json").read_text())["rows"]
    assert [r["variant"] for r in rows] == ["baseline", "dropout0.1"]
    for row in rows:
        assert row["status"] == "ok", row
        assert row["steps"] == 20 and row["best_valid_bleu"] is not None
        assert [step for step, _ in row["curve"]] == [10, 20]
    assert rows[1]["overrides"] == ["model.dropout=0.1"]
    assert (tmp_path / "sweep.tsv").read_text().count("\n") == 3


def test_every_sweep_variant_is_a_valid_override_that_changes_the_recipe(monkeypatch):
    # A misspelt key would only show on the GPU, minutes into a loan: check them all here.
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import gpu_sweep

    baseline = config.to_dict(config.load(gpu_sweep.RECIPE))
    for name, overrides in gpu_sweep.VARIANTS.items():
        variant = config.to_dict(config.load(gpu_sweep.RECIPE, overrides))
        assert (variant != baseline) == bool(overrides), name
    with pytest.raises(NmtError, match="nrom"):
        config.load(gpu_sweep.RECIPE, ["model.nrom=post"])
