"""Corpus-level BLEU, chrF and TER through sacrebleu, with its signatures.

Lines are read the way sacrebleu's own CLI reads them (trailing white space stripped), so
`nmt score HYP -r REF` prints the same numbers as `sacrebleu REF -i HYP`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sacrebleu.metrics import BLEU, CHRF, TER
from sacrebleu.significance import PairedTest

from nmt.errors import NmtError
from nmt.utils.files import read_lines

METRICS = ("bleu", "chrf", "chrf++", "ter")


@dataclass(frozen=True)
class Score:
    metric: str  # bleu | chrf | ter
    name: str  # sacrebleu's name for it: BLEU, chrF2, TER
    score: float
    signature: str
    text: str  # sacrebleu's one-line summary, signature first

    def as_dict(self) -> dict:
        return {
            "metric": self.metric,
            "name": self.name,
            "score": self.score,
            "signature": self.signature,
            "text": self.text,
        }


def _metric(name: str, lowercase: bool, tokenize: str | None):
    if name == "bleu":
        return BLEU(lowercase=lowercase, tokenize=tokenize)
    if name == "chrf":
        return CHRF(lowercase=lowercase)
    if name == "chrf++":
        return CHRF(lowercase=lowercase, word_order=2)
    if name == "ter":
        # sacrebleu's TER ignores case by default (its CLI too); keep its signatures equal.
        return TER(case_sensitive=False)
    raise NmtError(f"unknown metric '{name}'; choose from {', '.join(METRICS)}")


def score_lines(
    hyps: Sequence[str],
    refs: Sequence[Sequence[str]],
    metrics: Sequence[str] = ("bleu",),
    lowercase: bool = False,
    tokenize: str | None = None,
) -> list[Score]:
    """Score hypotheses against one or more reference streams (each as long as `hyps`)."""
    for i, ref in enumerate(refs):
        if len(ref) != len(hyps):
            raise NmtError(
                f"reference {i + 1} has {len(ref)} lines but the hypotheses have {len(hyps)}"
            )
    results = []
    for name in metrics:
        metric = _metric(name, lowercase, tokenize)
        result = metric.corpus_score(list(hyps), [list(r) for r in refs])
        signature = str(metric.get_signature())
        results.append(
            Score(name, result.name, result.score, signature, result.format(signature=signature))
        )
    return results


def read_for_scoring(path: Path) -> list[str]:
    return [line.rstrip() for line in read_lines(path)]


def score_files(
    hyp: Path,
    refs: Sequence[Path],
    metrics: Sequence[str] = ("bleu",),
    lowercase: bool = False,
    tokenize: str | None = None,
) -> list[Score]:
    hyps = read_for_scoring(hyp)
    ref_lines = [read_for_scoring(r) for r in refs]
    for path, lines in zip(refs, ref_lines):
        if len(lines) != len(hyps):
            raise NmtError(f"{path} has {len(lines)} lines but {hyp} has {len(hyps)}")
    return score_lines(hyps, ref_lines, metrics, lowercase, tokenize)


@dataclass(frozen=True)
class Comparison:
    """One system's score in a paired significance test against the baseline (the first)."""

    system: str
    metric: str
    score: float
    mean: float | None  # bootstrap estimate of the true score (bs only)
    ci: float | None  # half-width of its 95% confidence interval (bs only)
    p_value: float | None  # None for the baseline itself

    def as_dict(self) -> dict:
        return dict(vars(self))


def compare_files(
    baseline: Path,
    systems: Sequence[Path],
    refs: Sequence[Path],
    metrics: Sequence[str] = ("bleu",),
    test: str = "bs",
    samples: int | None = None,
    lowercase: bool = False,
    tokenize: str | None = None,
) -> tuple[list[Comparison], dict[str, str]]:
    """Paired bootstrap resampling (`bs`, 1000 samples by default) or approximate randomization
    (`ar`, 10000) of each system against the baseline, through sacrebleu, with its defaults
    (seed 12345), so the numbers equal `sacrebleu REF -i BASE SYS... --paired-bs`."""
    if test not in ("bs", "ar"):
        raise NmtError(f"unknown significance test '{test}'; use bs or ar")
    hyps = [read_for_scoring(p) for p in (baseline, *systems)]
    ref_lines = [read_for_scoring(r) for r in refs]
    for path, lines in zip((baseline, *systems), hyps):
        for ref_path, ref in zip(refs, ref_lines):
            if len(lines) != len(ref):
                raise NmtError(f"{ref_path} has {len(ref)} lines but {path} has {len(lines)}")
    names = [str(p) for p in (baseline, *systems)]
    n = samples if samples is not None else (1000 if test == "bs" else 10000)
    paired = PairedTest(
        list(zip(names, hyps)),
        {m: _metric(m, lowercase, tokenize) for m in metrics},
        references=ref_lines,
        test_type=test,
        n_samples=n,
    )
    signatures, table = paired()
    results = []
    for metric_name, metric_results in ((k, v) for k, v in table.items() if k != "System"):
        for name, r in zip(names, metric_results):
            results.append(
                Comparison(
                    name,
                    metric_name,
                    float(r.score),
                    None if r.mean is None else float(r.mean),
                    None if r.ci is None else float(r.ci),
                    None if r.p_value is None else float(r.p_value),
                )
            )
    return results, {k: str(v) for k, v in signatures.items()}
