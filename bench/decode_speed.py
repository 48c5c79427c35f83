"""Decoding speed: sentences/s and target tokens/s of `nmt translate` on a file.

Loads a checkpoint once, translates the whole input `--repeats` times per setting and reports
the median, so the figures leave out start-up (loading torch and the model). Each setting runs
in the same process, one after another, on the same input.

    python bench/decode_speed.py runs/multi30k_en_de -i data/multi30k/test_2016_flickr.en \\
        --setting beam5=beam_size=5 --setting greedy=method=greedy --repeats 3
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import torch


def _parse_setting(spec: str) -> tuple[str, dict]:
    name, _, assignments = spec.partition("=")
    values: dict = {}
    for assignment in filter(None, assignments.split(",")):
        key, _, raw = assignment.partition("=")
        values[key] = raw if key == "method" else float(raw) if "." in raw else int(raw)
    return name, values


def main() -> None:
    from nmt.data import read_lines
    from nmt.translate import Translator

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("-i", "--input", required=True)
    parser.add_argument(
        "--setting",
        action="append",
        default=[],
        help="NAME=key=value[,key=value] of decode settings, e.g. beam5=beam_size=5 (repeatable)",
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    lines = list(read_lines(Path(args.input)))
    settings = [_parse_setting(s) for s in args.setting] or [("default", {})]
    print(
        f"# {time.strftime('%Y-%m-%d %H:%M')} {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}, {len(lines)} sentences"
    )
    for name, values in settings:
        translator = Translator.load(args.checkpoint, device="cpu", **values)
        seconds = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            outputs = translator.translate(lines)
            seconds.append(time.perf_counter() - start)
        tokens = sum(len(ids) + 1 for ids in translator.tgt_tok.encode(outputs))
        median = statistics.median(seconds)
        print(
            json.dumps(
                {
                    "setting": name,
                    "decode": vars(translator.decode),
                    "sentences_per_s": len(lines) / median,
                    "tgt_tokens_per_s": tokens / median,
                    "seconds": seconds,
                    "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                }
            )
        )
        sys.stdout.flush()


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    main()
