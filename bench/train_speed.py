"""Training throughput: target tokens/s, step time and peak memory of training steps.

Runs real optimizer steps of `nmt.training.trainer.Trainer` on a recipe's preprocessed data (run
`nmt preprocess RECIPE` first) and reports medians over several timed windows. Each variant runs
in a fresh process, so peak memory is its own.

    python bench/train_speed.py recipes/multi30k_en_de.yaml --steps 20 --windows 3
    python bench/train_speed.py recipes/multi30k_en_de.yaml --variant attn=model.attention=luong

Like `nmt train`, each process keeps freed memory for reuse on CPU (nmt.utils.device.reuse_freed_memory);
the pseudo-setting `malloc=glibc` in a variant leaves the C library's defaults instead.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def measure(recipe_path: str, overrides: list[str], steps: int, windows: int) -> dict:
    """Time `windows` windows of `steps` updates each, after two warm-up updates."""
    from nmt import config
    from nmt.models.base import count_parameters
    from nmt.training.distributed import World
    from nmt.training.run import Run
    from nmt.utils.device import resolve_device, reuse_freed_memory

    glibc_malloc = "malloc=glibc" in overrides
    overrides = [o for o in overrides if o != "malloc=glibc"]
    with tempfile.TemporaryDirectory() as run_dir:
        # A throwaway run folder, but the recipe's own preprocessed data.
        prepared = config.load(recipe_path, overrides).prepared_dir
        recipe = config.load(
            recipe_path, overrides + [f"run_dir={run_dir}", f"data.prepared_dir={prepared}"]
        )
        if recipe.train.threads:
            torch.set_num_threads(recipe.train.threads)
        device = resolve_device(recipe.train.device)
        if device.type == "cpu" and not glibc_malloc:
            reuse_freed_memory()
        run = Run.start(recipe, device, World(), force=True)
        trainer = run.trainer
        cuda = device.type == "cuda"
        lr = recipe.train.lr
        updates = (g for epoch in range(1, 1000) for g in run.epoch_updates(epoch))
        rss_before = _rss_bytes()
        # A compiled step compiles again for dynamic shapes after its first batches.
        for _ in range(6 if recipe.train.compile else 2):
            trainer.update(next(updates), lr)
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        rates, step_times = [], []
        usage_before = resource.getrusage(resource.RUSAGE_SELF)
        for _ in range(windows):
            tokens = 0
            start = time.perf_counter()
            for _ in range(steps):
                tokens += trainer.update(next(updates), lr).tokens
            if cuda:
                torch.cuda.synchronize()
            elapsed = time.perf_counter() - start
            rates.append(tokens / elapsed)
            step_times.append(elapsed / steps)
        usage = resource.getrusage(resource.RUSAGE_SELF)
        peak = (
            torch.cuda.max_memory_allocated()
            if cuda
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_before
        )
        return {
            "overrides": overrides,
            "parameters": count_parameters(trainer.model),
            "device": str(trainer.device),
            "precision": trainer.precision,
            "threads": torch.get_num_threads(),
            "tgt_tokens_per_s": statistics.median(rates),
            "tgt_tokens_per_s_windows": rates,
            "step_seconds": statistics.median(step_times),
            # Kernel time and page faults an update: what the C library's handling of freed
            # memory costs (each first touch of a fresh page faults).
            "kernel_seconds_per_step": (usage.ru_stime - usage_before.ru_stime) / (steps * windows),
            "page_faults_per_step": (usage.ru_minflt - usage_before.ru_minflt) / (steps * windows),
            "peak_memory_mib": peak / 2**20,
            "peak_memory_kind": "cuda max allocated" if cuda else "rss growth over the steps",
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        help="recipe override for every variant (repeatable)",
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        help="NAME=key=value[,key=value]: one measured variant (repeatable)",
    )
    parser.add_argument("--steps", type=int, default=20, help="updates per timed window")
    parser.add_argument("--windows", type=int, default=3, help="timed windows (median reported)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        extra = json.loads(args.child)
        print(json.dumps(measure(args.recipe, args.overrides + extra, args.steps, args.windows)))
        return
    variants = {"default": []}
    for spec in args.variant:
        name, _, assignments = spec.partition("=")
        variants[name] = assignments.split(",") if assignments else []
    print(
        f"# {time.strftime('%Y-%m-%d %H:%M')} {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    for name, extra in variants.items():
        cmd = [
            sys.executable,
            __file__,
            args.recipe,
            "--steps",
            str(args.steps),
            "--windows",
            str(args.windows),
            "--child",
            json.dumps(extra),
        ]
        for o in args.overrides:
            cmd += ["--set", o]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        result = json.loads(out.strip().splitlines()[-1])
        result["variant"] = name
        print(json.dumps(result))
        sys.stdout.flush()


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    main()
