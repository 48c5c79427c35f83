"""Decoding speed: sentences/s and target tokens/s of `nmt translate` on a file, beside
CTranslate2 called directly.

Each setting runs in its own process (so its peak memory is its own), loads its model once and
translates one warm-up slice of the input. Then the settings take turns: each pass translates
the whole input once in every process in turn, `--repeats` passes, and each setting reports
its median pass, leaving out start-up (importing torch, loading the model). Taking turns makes
a shared machine's slow minutes fall on every setting alike.

    python bench/decode_speed.py runs/multi30k_en_de -i data/multi30k/test_2016_flickr.en \\
        --setting beam5=beam_size=5 --setting greedy=method=greedy \\
        --setting beam5_int8=beam_size=5,quantize=int8 --setting beam5_b1=beam_size=5,batch_size=1

A setting is NAME=key=value[,key=value]: any decode key (beam_size, method, batch_size,
batch_tokens, length_penalty, ...) or quantize=int8, precision=bf16, device=cuda, compile=1,
shortlist=1 (`nmt translate --compile / --shortlist`), or
export=DIR: translate with DIR, the model written by `nmt export --to ctranslate2`, which
CTranslate2 decodes (there quantize=int8 and precision choose its compute type). CTranslate2
runs on as many threads as torch (--threads). tree=DIR runs the nmt of another checkout (a
`git worktree` of an older commit), so two versions take turns in one run. Side by side on one
model:

    nmt export runs/multi30k_en_de --to ctranslate2 /tmp/m30k_ct2
    python bench/decode_speed.py runs/multi30k_en_de -i data/multi30k/test_2016_flickr.en \\
        --setting beam5=beam_size=5,batch_size=64 \\
        --setting ct2_beam5=beam_size=5,batch_size=64,export=/tmp/m30k_ct2 ...

A setting with direct=DIR runs CTranslate2 on the exported folder DIR by itself, as a user of
CTranslate2 would: SentencePiece's source.spm and target.spm around `translate_batch`
(beam_size, batch_size -> max_batch_size, quantize=int8 -> compute type int8, method=greedy ->
beam 1), on as many threads as torch; nmt's code is not involved:

    python bench/decode_speed.py runs/multi30k_en_de -i data/multi30k/test_2016_flickr.en \
        --threads 1 --setting nmt_beam5=beam_size=5,batch_size=64 \
        --setting ct2_beam5=beam_size=5,batch_size=64,direct=/tmp/m30k_ct2

`--table FILE` writes the results as a Markdown table, each setting beside the first one that
names CTranslate2 with the same search (or beside the first setting), as a ratio.

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

STRING_KEYS = ("method", "quantize", "precision", "device", "export", "direct", "tree")


def _parse_setting(spec: str) -> tuple[str, dict]:
    name, _, assignments = spec.partition("=")
    values: dict = {}
    for assignment in filter(None, assignments.split(",")):
        key, _, raw = assignment.partition("=")
        values[key] = raw if key in STRING_KEYS else float(raw) if "." in raw else int(raw)
    return name, values


def _load(args: argparse.Namespace, values: dict):
    """The translator a setting names: the checkpoint's, or with export=DIR, CTranslate2's."""
    from nmt.decoding.translator import Translator

    options = {key: value for key, value in values.items() if key not in ("export", "tree")}
    return Translator.load(values.get("export", args.checkpoint), **options)


class _Direct:
    """CTranslate2 on an exported folder, called as its own users call it."""

    def __init__(self, folder: str, values: dict) -> None:
        import ctranslate2
        import sentencepiece as spm

        from nmt.data.tokenizer import Tokenizer

        self.src = spm.SentencePieceProcessor(model_file=str(Path(folder) / "source.spm"))
        # nmt's tokenizer only counts the output's tokens, outside the timed pass.
        self.tgt_tok = Tokenizer.from_file(Path(folder) / "target.spm")
        compute = "int8" if values.get("quantize") == "int8" else "float32"
        threads = torch.get_num_threads()
        self.translator = ctranslate2.Translator(
            folder, device="cpu", compute_type=compute, intra_threads=threads, inter_threads=1
        )
        self.beam = 1 if values.get("method") == "greedy" else int(values.get("beam_size", 5))
        self.batch = int(values.get("batch_size", 64))

    def translate(self, lines: list[str]) -> list[str]:
        pieces = self.src.encode(lines, out_type=str)
        longest = max(len(p) for p in pieces) + 1
        results = self.translator.translate_batch(
            pieces,
            beam_size=self.beam,
            max_batch_size=self.batch,
            max_decoding_length=int(1.2 * longest + 10),  # nmt's default limit, a * n + b
        )
        return self.tgt_tok.sp.decode([r.hypotheses[0] for r in results])


def _worker(args: argparse.Namespace, name: str, values: dict) -> None:
    """A child: load, warm up, then translate the input once per line read from stdin and
    answer the pass's seconds; at end of input, the summary."""
    from nmt.utils.files import read_lines

    lines = list(read_lines(Path(args.input)))
    values = {"device": "cpu", **values}
    translator = _Direct(values["direct"], values) if "direct" in values else _load(args, values)
    outputs = translator.translate(lines[:100])
    print("ready", flush=True)
    seconds = []
    for _ in sys.stdin:
        start = time.perf_counter()
        outputs = translator.translate(lines)
        seconds.append(time.perf_counter() - start)
        print(json.dumps(seconds[-1]), flush=True)
    tokens = sum(len(ids) + 1 for ids in translator.tgt_tok.encode(outputs))
    median = statistics.median(seconds)
    print(
        json.dumps(
            {
                "setting": name,
                "values": values,
                "sentences": len(lines),
                "sentences_per_s": round(len(lines) / median, 1),
                "ms_per_sentence": round(1000 * median / len(lines), 2),
                "tgt_tokens_per_s": round(tokens / median),
                "seconds": [round(s, 2) for s in seconds],
                "max_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            }
        ),
        flush=True,
    )


def _table(results: list[dict]) -> str:
    """Markdown: each setting's speed, and CTranslate2's over it for the same search."""

    def search(r: dict) -> tuple:
        v = r["values"]
        return (v.get("method", "beam"), v.get("beam_size"), v.get("batch_size"), v.get("quantize"))

    rows = [
        "| setting | engine | sentences/s | ms/sentence | target tokens/s | peak RSS MiB | CT2 / this |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        ct2 = next((o for o in results if "direct" in o["values"] and search(o) == search(r)), None)
        ratio = f"{ct2['sentences_per_s'] / r['sentences_per_s']:.2f}×" if ct2 else ""
        engine = (
            "CTranslate2 (direct)"
            if "direct" in r["values"]
            else ("nmt on CTranslate2" if "export" in r["values"] else "nmt")
        )
        if "tree" in r["values"]:
            engine += f" at {r['values']['tree']}"
        for option in ("compile", "shortlist"):
            if r["values"].get(option):
                engine += f" --{option}"
        rows.append(
            f"| {r['setting']} | {engine} | {r['sentences_per_s']} | {r['ms_per_sentence']} "
            f"| {r['tgt_tokens_per_s']} | {r['max_rss_mib']} | {ratio} |"
        )
    return "\n".join(rows) + "\n"


def _profile(args: argparse.Namespace, name: str, values: dict) -> None:
    from torch.profiler import ProfilerActivity, profile

    from nmt.utils.files import read_lines

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
    parser.add_argument("--table", help="write a Markdown table here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = [_parse_setting(s) for s in args.setting] or [("default", {})]
    if args.child:
        name, values = settings[0]
        if "tree" in values:  # another checkout's nmt: two versions side by side in one run
            sys.path.insert(0, str(Path(values["tree"]).resolve()))
        _worker(args, name, values)
        return
    if args.profile:
        _profile(args, *settings[0])
        return
    header = (
        f"# {time.strftime('%Y-%m-%d %H:%M')} {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"{args.repeats} passes taken in turn"
    )
    print(header)
    children = []
    for spec in args.setting or ["default="]:
        command = [
            sys.executable, __file__, args.checkpoint, "-i", args.input, "--setting", spec,
            "--threads", str(args.threads), "--child",
        ]  # fmt: skip
        child = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        if child.stdout.readline().strip() != "ready":  # type: ignore[union-attr]
            sys.exit(f"setting {spec} failed to start")
        children.append(child)
    for _ in range(args.repeats):
        for child in children:
            child.stdin.write("go\n")  # type: ignore[union-attr]
            child.stdin.flush()  # type: ignore[union-attr]
            child.stdout.readline()  # type: ignore[union-attr]
    results = []
    for child in children:
        out, _ = child.communicate(timeout=600)
        results.append(json.loads(out.strip().splitlines()[-1]))
        print(json.dumps(results[-1]))
    if args.table:
        Path(args.table).write_text(header + "\n\n" + _table(results), encoding="utf-8")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    main()
