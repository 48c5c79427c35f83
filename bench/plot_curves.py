"""Learning curves: validation BLEU against wall-clock minutes (and against updates), one line
per run, from the runs' log.jsonl; the averaged checkpoint is a marker at the end.

    python bench/plot_curves.py runs/multi30k_en_de runs/multi30k_de_en --out docs/learning_curves.png
    python bench/plot_curves.py NAME=RUN_DIR ...     # a label of your own per run
    python bench/plot_curves.py NAME=docs/logs/RUN.jsonl ...   # a kept log instead of a run folder
    python bench/plot_curves.py RUN ... --at-step 1500 --at-minutes 60,120   # a table, no plot

--at-step / --at-minutes print each run's validation BLEU at the last validation at or before
that many updates / minutes: the equal-step and equal-time comparisons of runs whose step
costs differ.

Needs matplotlib (`pip install 'nmt[plot]'`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from nmt import runlog


def _curve(run: Path) -> tuple[list[float], list[int], list[float], dict | None]:
    """A run folder's log.jsonl, or a log file itself (docs/logs/ keeps those of the measured
    runs, since run folders do not outlive the machine they ran on)."""
    minutes, steps, bleu, averaged = [], [], [], None
    for record in runlog.read(run):
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
    parser.add_argument("--out", help="the PNG to write")
    parser.add_argument("--at-step", default="", help="updates, comma-separated (a table)")
    parser.add_argument("--at-minutes", default="", help="minutes, comma-separated (a table)")
    parser.add_argument("--title", default="Multi30k: validation BLEU (greedy) while training")
    args = parser.parse_args()
    if args.at_step or args.at_minutes:
        _table(args.runs, args.at_step, args.at_minutes)
    if args.out:
        _plot(args.runs, args.out, args.title)
    elif not (args.at_step or args.at_minutes):
        parser.error("give --out, --at-step or --at-minutes")


def _at(xs: list[float], bleu: list[float], x: float) -> str:
    """BLEU of the last validation at or before x, with where it was."""
    seen = [(at, b) for at, b in zip(xs, bleu) if at <= x + 1e-9]
    if not seen:
        return "–"
    at, b = seen[-1]
    return f"{b:.2f} ({at:.0f})" if at != x else f"{b:.2f}"


def _table(runs: list[str], at_step: str, at_minutes: str) -> None:
    steps_at = [int(x) for x in at_step.split(",") if x]
    minutes_at = [float(x) for x in at_minutes.split(",") if x]
    head = [f"step {x}" for x in steps_at] + [f"{x:g} min" for x in minutes_at]
    print("| run | " + " | ".join(head) + " | last: step, min, BLEU |")
    print("| --- " * (len(head) + 2) + "|")
    for spec in runs:
        name, _, path = spec.rpartition("=")
        minutes, steps, bleu, _ = _curve(Path(path))
        cells = [_at(steps, bleu, x) for x in steps_at] + [
            _at(minutes, bleu, x) for x in minutes_at
        ]
        last = f"{steps[-1]}, {minutes[-1]:.0f}, {bleu[-1]:.2f}" if steps else "–"
        print(f"| {name or Path(path).stem} | " + " | ".join(cells) + f" | {last} |")


def _plot(runs: list[str], out: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (by_time, by_step) = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for spec in runs:
        name, _, path = spec.rpartition("=")
        run = Path(path)
        minutes, steps, bleu, averaged = _curve(run)
        label = name or run.stem
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
    fig.suptitle(title + "  (★ averaged checkpoints)", fontsize=10)
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
