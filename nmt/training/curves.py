"""Learning curves from runs' logs: validation BLEU against updates and wall-clock minutes, as a
table (the equal-step and equal-time comparisons of runs whose updates cost differently) and as
a picture (`nmt curves RUN... -o curves.png`).

A curve is read from a run folder's log.jsonl, or from a log file itself (a log kept after its
run folder is gone: docs/logs/ holds those of the measured runs).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from nmt.errors import NmtError
from nmt.training import runlog


@dataclass
class Curve:
    label: str
    steps: list[int] = field(default_factory=list)  # of each validation
    minutes: list[float] = field(default_factory=list)  # since the start, validations included
    bleu: list[float] = field(default_factory=list)  # its BLEU (the search of train.valid_search)
    averaged_bleu: float | None = None  # averaged.pt's, at the end (train.average_last)

    def at_step(self, step: float) -> tuple[float, float] | None:
        """(updates, BLEU) of the last validation at or before `step`."""
        return _last_at_or_before(self.steps, self.bleu, step)

    def at_minutes(self, minutes: float) -> tuple[float, float] | None:
        """(minutes, BLEU) of the last validation at or before `minutes` of the run."""
        return _last_at_or_before(self.minutes, self.bleu, minutes)


def read_curve(spec: str | Path) -> Curve:
    """A run folder or log file, optionally labelled: `NAME=PATH` (the label is otherwise the
    folder's or file's name)."""
    name, _, path_text = str(spec).rpartition("=")
    path = Path(path_text)
    if path.is_dir() and not (path / runlog.LOG).is_file():
        raise NmtError(f"{path} has no {runlog.LOG}: not a run folder, or not trained yet")
    if not path.exists():
        raise NmtError(f"{path}: no such run folder or log file")
    curve = Curve(name or path.stem)
    for record in runlog.read(path):
        # Logs written before validations recorded `elapsed` have no time to plot them at.
        if record["kind"] == "valid" and "elapsed" in record:
            curve.steps.append(record["step"])
            curve.minutes.append(record["elapsed"] / 60)
            curve.bleu.append(record["valid_bleu"])
        elif record["kind"] == "averaged":
            curve.averaged_bleu = record["valid_bleu"]
    return curve


def table(curves: Sequence[Curve], steps: Sequence[int] = (), minutes: Sequence[float] = ()) -> str:
    """A Markdown table: per curve, BLEU at each of `steps` and `minutes` (the last validation
    at or before it, with where it was when that is not exactly there), the best validation,
    the averaged checkpoint's and the last validation's."""
    head = [f"step {s}" for s in steps] + [f"{m:g} min" for m in minutes]
    head += ["best (step)", "averaged", "last: step, min, BLEU"]
    rows = ["| run | " + " | ".join(head) + " |", "| --- " * (len(head) + 1) + "|"]
    for c in curves:
        cells = [_cell(c.at_step(s), s) for s in steps]
        cells += [_cell(c.at_minutes(m), m) for m in minutes]
        if c.bleu:
            best = max(range(len(c.bleu)), key=lambda i: (c.bleu[i], -i))
            cells.append(f"{c.bleu[best]:.2f} ({c.steps[best]})")
        else:
            cells.append("–")
        cells.append("–" if c.averaged_bleu is None else f"{c.averaged_bleu:.2f}")
        last = "–"
        if c.steps:
            last = f"{c.steps[-1]}, {c.minutes[-1]:.0f}, {c.bleu[-1]:.2f}"
        rows.append("| " + " | ".join([c.label, *cells, last]) + " |")
    return "\n".join(rows)


def plot(curves: Sequence[Curve], path: Path, title: str = "") -> None:
    """One PNG, two panels sharing the BLEU axis: against wall-clock minutes of training and
    against updates; each averaged checkpoint a star at its run's end."""
    from nmt.utils.plot import pyplot

    plt = pyplot("nmt curves -o")
    fig, (by_time, by_step) = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for c in curves:
        if not c.steps:
            continue
        (line,) = by_step.plot(c.steps, c.bleu, label=c.label, linewidth=1.5)
        by_time.plot(c.minutes, c.bleu, color=line.get_color(), linewidth=1.5)
        if c.averaged_bleu is not None:
            by_step.plot(c.steps[-1], c.averaged_bleu, "*", color=line.get_color(), ms=10)
            by_time.plot(c.minutes[-1], c.averaged_bleu, "*", color=line.get_color(), ms=10)
    by_time.set_xlabel("wall-clock minutes (validations included)")
    by_step.set_xlabel("updates")
    by_time.set_ylabel("validation BLEU")
    for ax in (by_time, by_step):
        ax.grid(alpha=0.3)
    by_step.legend(loc="lower right", fontsize=8)
    fig.suptitle((title or "Validation BLEU while training") + "  (★ averaged checkpoints)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _last_at_or_before(
    xs: Sequence[float], ys: Sequence[float], x: float
) -> tuple[float, float] | None:
    seen = [(at, y) for at, y in zip(xs, ys) if at <= x + 1e-9]
    return seen[-1] if seen else None


def _cell(point: tuple[float, float] | None, x: float) -> str:
    if point is None:
        return "–"
    at, bleu = point
    return f"{bleu:.2f}" if at == x else f"{bleu:.2f} ({at:.0f})"
