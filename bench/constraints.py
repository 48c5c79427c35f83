"""Terminology constraints on a test set: BLEU with and without, the share of constraints met,
and what they cost in speed, one model, one process, side by side.

Each sentence's constraints are up to --phrases words of its own reference: for a German
target, capitalised words that do not start the sentence (German capitalises its nouns, so
these are the reference's nouns without a parser); for other targets, the longest words of 4
letters or more that do not start the sentence. Which of them: a seeded random choice.

    python bench/constraints.py runs/multi30k_en_de -i data/multi30k/test_2016_flickr.en \\
        -r data/multi30k/test_2016_flickr.de --phrases 2 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import re
import statistics
import time

import sacrebleu
import torch

from nmt.decoding.translator import Translator

_PUNCT = ".,;:!?\"'()[]"


def reference_phrases(reference: str, number: int, german: bool, rng: random.Random) -> list[str]:
    words = [w.strip(_PUNCT) for w in reference.split()[1:]]
    if german:
        candidates = [w for w in words if len(w) >= 3 and w[0].isupper() and w.isalpha()]
    else:
        candidates = sorted(
            {w for w in words if len(w) >= 4 and w.isalpha()}, key=lambda w: (-len(w), w)
        )
        candidates = candidates[: 2 * number]
    candidates = list(dict.fromkeys(candidates))
    return rng.sample(candidates, min(number, len(candidates)))


def met(output: str, phrase: str) -> tuple[bool, bool]:
    """(the phrase occurs in the output, it occurs as a whole word)."""
    whole = re.search(rf"(?<!\w){re.escape(phrase)}(?!\w)", output) is not None
    return phrase in output, whole


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("run")
    p.add_argument("-i", "--input", required=True)
    p.add_argument("-r", "--reference", required=True)
    p.add_argument("--phrases", type=int, default=2, help="constraints per sentence, at most")
    p.add_argument("--beam", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3, help="timed runs of each setting")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--limit", type=int, default=0, help="first N sentences only")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--words",
        choices=["auto", "longest"],
        default="auto",
        help="auto: a German target's capitalised words (its nouns), else the longest words; "
        "longest: the longest words whatever the language (the toy corpus is lowercase)",
    )
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    sources = open(args.input, encoding="utf-8").read().splitlines()
    refs = open(args.reference, encoding="utf-8").read().splitlines()
    if args.limit:
        sources, refs = sources[: args.limit], refs[: args.limit]
    translator = Translator.load(args.run, device="cpu", beam_size=args.beam, method="beam")
    german = translator.info["recipe"].data.tgt_lang == "de" and args.words == "auto"
    rng = random.Random(args.seed)
    constraints = [reference_phrases(r, args.phrases, german, rng) for r in refs]

    results = {}
    for name, given in (("plain", None), ("constrained", constraints)):
        seconds, outputs = [], None
        for _ in range(args.repeats):
            start = time.perf_counter()
            hyps = translator.translate_nbest(sources, constraints=given)
            seconds.append(time.perf_counter() - start)
            outputs = [h[0].text for h in hyps]
        bleu = sacrebleu.corpus_bleu(outputs, [refs]).score
        bleu_lc = sacrebleu.corpus_bleu(outputs, [refs], lowercase=True).score
        chrf = sacrebleu.corpus_chrf(outputs, [refs]).score
        checks = [met(o, ph) for o, phs in zip(outputs, constraints) for ph in phs]
        median = statistics.median(seconds)
        results[name] = {
            "bleu": round(bleu, 2),
            "bleu_lc": round(bleu_lc, 2),
            "chrf": round(chrf, 2),
            "constraints": len(checks),
            "met": round(100 * sum(c[0] for c in checks) / max(1, len(checks)), 2),
            "met_whole_word": round(100 * sum(c[1] for c in checks) / max(1, len(checks)), 2),
            "seconds": [round(s, 2) for s in seconds],
            "sentences_per_s": round(len(sources) / median, 1),
        }
    plain, constrained = results["plain"], results["constrained"]
    summary = {
        "run": args.run,
        "sentences": len(sources),
        "phrases_per_sentence": args.phrases,
        "beam": args.beam,
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "results": results,
        "slowdown": round(plain["sentences_per_s"] / constrained["sentences_per_s"], 2),
    }
    print(json.dumps(summary, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=1)


if __name__ == "__main__":
    main()
