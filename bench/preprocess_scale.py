"""Preprocessing at scale: Multi30k repeated N times (100x: 2.9 M pairs) through `nmt preprocess`.

Builds the repeated corpus in a temporary folder (streamed, never held in memory), runs
`nmt preprocess` on it in a child process and reports wall time, pairs/s and the child's peak
RSS; then starts `nmt train` on the result for a few updates and reports its peak RSS, to show
that training maps the binarized corpus instead of loading it.

    python bench/preprocess_scale.py --repeat 100 --train-steps 3

Needs the Multi30k files first: python data/fetch_multi30k.py --from ../shared/data/multi30k
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def _repeat(src: Path, dst: Path, times: int) -> int:
    lines = 0
    with open(dst, "wb") as out:
        for _ in range(times):
            with open(src, "rb") as f:
                shutil.copyfileobj(f, out)
    with open(dst, "rb") as f:
        lines = sum(1 for _ in f)
    return lines


def _run(command: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one child command (its own, through wait4)."""
    with tempfile.TemporaryFile() as errors:  # a file, not a pipe: nothing can block on it
        start = time.perf_counter()
        child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=errors)
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - start
        if os.waitstatus_to_exitcode(status) != 0:
            errors.seek(0)
            sys.exit(f"{' '.join(command)} failed:\n{errors.read().decode()[-3000:]}")
    return seconds, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT / "data" / "multi30k"))
    parser.add_argument("--repeat", type=int, default=100)
    parser.add_argument("--train-steps", type=int, default=3, help="0 skips the training check")
    parser.add_argument("--keep", help="keep the work folder here instead of a temporary one")
    args = parser.parse_args()

    work = Path(args.keep or tempfile.mkdtemp(prefix="nmt-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        corpus = work / "corpus"
        corpus.mkdir(exist_ok=True)
        start = time.perf_counter()
        pairs = 0
        for lang in ("en", "de"):
            pairs = _repeat(
                Path(args.data) / f"train.{lang}", corpus / f"train.{lang}", args.repeat
            )
            shutil.copyfile(Path(args.data) / f"val.{lang}", corpus / f"val.{lang}")
        size = sum(p.stat().st_size for p in corpus.iterdir())
        print(f"# {pairs:,} training pairs, {size / 2**20:.0f} MiB of text, written in "
              f"{time.perf_counter() - start:.0f} s", flush=True)  # fmt: skip

        recipe = yaml.safe_load((ROOT / "recipes" / "multi30k_en_de.yaml").read_text())
        recipe["run_dir"] = str(work / "run")
        recipe["data"].update(train=str(corpus / "train"), valid=str(corpus / "val"), test=None)
        path = work / "recipe.yaml"
        path.write_text(yaml.safe_dump(recipe, sort_keys=False))
        nmt = [sys.executable, "-m", "nmt", "-q"]
        seconds, rss = _run([*nmt, "preprocess", str(path), "--force"])
        prepared = work / "run" / "prepared"
        manifest = json.loads((prepared / "manifest.json").read_text())
        binary = sum(p.stat().st_size for p in prepared.glob("train.*"))
        result = {
            "pairs": pairs,
            "kept": manifest["splits"]["train"],
            "preprocess_s": round(seconds, 1),
            "pairs_per_s": round(pairs / seconds),
            "preprocess_peak_rss_mib": round(rss),
            "binarized_mib": round(binary / 2**20),
            "cpus": os.cpu_count(),
        }
        if args.train_steps:
            seconds, rss = _run(
                [*nmt, "train", str(path), "--no-progress", "--set",
                 f"train.max_steps={args.train_steps}", "--set", "train.valid_every=1000000"]
            )  # fmt: skip
            result.update(train_s=round(seconds, 1), train_peak_rss_mib=round(rss))
        print(json.dumps(result))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
