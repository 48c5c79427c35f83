"""Decoding speed: sentences/s and target tokens/s of `nmt translate` on a file.

Each setting runs in its own process (so its peak memory is its own), loads the checkpoint
once, translates the whole input `--repeats` times and reports the median pass, leaving out
start-up (importing torch, loading the model). Settings run one after another on the same
input, so their figures compare side by side.

    python bench/decode_speed.py runs/multi30k_en_de -i data/multi30k/test_2016_flickr.en \\
        --setting beam5=beam_size=5 --setting greedy=method=greedy \\
        --setting beam5_int8=beam_size=5,quantize=int8 --setting beam5_b1=beam_size=5,batch_size=1

A setting is NAME=key=value[,key=value]: any decode key (beam_size, method, batch_size,
batch_tokens, length_penalty, ...) or quantize=int8, precision=bf16, device=cuda, or
export=DIR: translate with DIR, the model written by `nmt export --to ctranslate2`, which
CTranslate2 decodes (there quantize=int8 and precision choose its compute type). CTranslate2
runs on as many threads as torch (--threads). Side by side on one model:

    nmt export runs/multi30k_en_de --to ctranslate2 /tmp/m30k_ct2
    python bench/decode_speed.py runs/multi30k_en_de -i data/multi30k/test_2016_flickr.en \\
        --setting beam5=beam_size=5,batch_size=64 \\
        --setting ct2_beam5=beam_size=5,batch_size=64,export=/tmp/m30k_ct2 ...

`--profile` prints, for the first setting, where one pass spends its time (torch.profiler).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

STRING_KEYS = ("method", "quantize", "precision", "device", "export")


def _parse_setting(spec: str) -> tuple[str, dict]:
    name, _, assignments = spec.partition("=")
    values: dict = {}
    for assignment in filter(None, assignments.split(",")):
        key, _, raw = assignment.partition("=")
        values[key] = raw if key in STRING_KEYS else float(raw) if "." in raw else int(raw)
    return name, values


def _load(args: argparse.Namespace, values: dict):
    """The translator a setting names: the checkpoint's, or with export=DIR, CTranslate2's."""
    from nmt.translate import Translator

    options = {key: value for key, value in values.items() if key != "export"}
    return Translator.load(values.get("export", args.checkpoint), **options)


def _measure(args: argparse.Namespace, name: str, values: dict) -> dict:
    from nmt.files import read_lines

    lines = list(read_lines(Path(args.input)))
    values = {"device": "cpu", **values}
    translator = _load(args, values)
    seconds = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        outputs = translator.translate(lines)
        seconds.append(time.perf_counter() - start)
    tokens = sum(len(ids) + 1 for ids in translator.tgt_tok.encode(outputs))
    median = statistics.median(seconds)
    if args.output:
        Path(args.output).write_text("".join(o + "\n" for o in outputs), encoding="utf-8")
    return {
        "setting": name,
        "values": values,
        "sentences": len(lines),
        "sentences_per_s": round(len(lines) / median, 1),
        "tgt_tokens_per_s": round(tokens / median),
        "seconds": [round(s, 2) for s in seconds],
        "max_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


def _profile(args: argparse.Namespace, name: str, values: dict) -> None:
    from torch.profiler import ProfilerActivity, profile

    from nmt.files import read_lines

    lines = list(read_lines(Path(args.input)))
    translator = _load(args, {"device": "cpu", **values})
    translator.translate(lines[:50])  # warm-up
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        translator.translate(lines)
    wall = time.perf_counter() - start
    events = prof.key_averages()
    ops = sum(e.self_cpu_time_total for e in events) / 1e6
    print(f"# profile of '{name}': {wall:.2f} s wall under the profiler, {ops:.2f} s in torch ops")
    print(events.table(sort_by="self_cpu_time_total", row_limit=args.profile_rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("-i", "--input", required=True)
    parser.add_argument("--setting", action="append", default=[], help="NAME=key=value,...")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--profile", action="store_true", help="profile the first setting")
    parser.add_argument("--profile-rows", type=int, default=15)
    parser.add_argument("--output", help=argparse.SUPPRESS)  # a child writes its translations
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = [_parse_setting(s) for s in args.setting] or [("default", {})]
    if args.child:
        print(json.dumps(_measure(args, *settings[0])))
        return
    if args.profile:
        _profile(args, *settings[0])
        return
    print(
        f"# {time.strftime('%Y-%m-%d %H:%M')} {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    for spec in args.setting or ["default="]:
        command = [
            sys.executable, __file__, args.checkpoint, "-i", args.input, "--setting", spec,
            "--repeats", str(args.repeats), "--threads", str(args.threads), "--child",
        ]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            sys.exit(f"setting {spec} failed:\n{result.stderr}")
        print(result.stdout.strip().splitlines()[-1])
        sys.stdout.flush()


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    main()
