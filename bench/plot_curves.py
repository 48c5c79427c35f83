"""Learning curves: validation BLEU against wall-clock minutes (and against updates), one line
per run, from the runs' log.jsonl; the averaged checkpoint is a marker at the end.

    python bench/plot_curves.py runs/multi30k_en_de runs/multi30k_de_en --out docs/learning_curves.png
    python bench/plot_curves.py NAME=RUN_DIR ...     # a label of your own per run

Needs matplotlib (`pip install 'nmt[plot]'`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _curve(run: Path) -> tuple[list[float], list[int], list[float], dict | None]:
    minutes, steps, bleu, averaged = [], [], [], None
    for line in (run / "log.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record["kind"] == "valid" and "elapsed" in record:
            minutes.append(record["elapsed"] / 60)
            steps.append(record["step"])
            bleu.append(record["valid_bleu"])
        elif record["kind"] == "averaged":
            averaged = record
    return minutes, steps, bleu, averaged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run folders, or NAME=RUN_DIR")
    parser.add_argument("--out", required=True, help="the PNG to write")
    parser.add_argument("--title", default="Multi30k: validation BLEU (greedy) while training")
    args = parser.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (by_time, by_step) = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for spec in args.runs:
        name, _, path = spec.rpartition("=")
        run = Path(path)
        minutes, steps, bleu, averaged = _curve(run)
        label = name or run.name
        (line,) = by_time.plot(minutes, bleu, label=label, linewidth=1.5)
        by_step.plot(steps, bleu, color=line.get_color(), linewidth=1.5)
        if averaged is not None and minutes:
            by_time.plot(minutes[-1], averaged["valid_bleu"], "*", color=line.get_color(), ms=10)
            by_step.plot(steps[-1], averaged["valid_bleu"], "*", color=line.get_color(), ms=10)
    by_time.set_xlabel("wall-clock minutes (2-core CPU)")
    by_step.set_xlabel("updates")
    by_time.set_ylabel("validation BLEU (greedy)")
    for ax in (by_time, by_step):
        ax.grid(alpha=0.3)
    by_time.legend(loc="lower right", fontsize=8)
    fig.suptitle(args.title + "  (★ averaged checkpoints)", fontsize=10)
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
