"""Choose decoding settings on the validation set, never on the test set.

`tune()` translates the run's validation sources with every combination of beam size and
length penalty given, scores each with BLEU against the raw validation references, and writes
the best combination into the run folder's recipe.yaml, whose `decode` section `nmt translate
RUN_DIR` uses. Every result is kept in RUN_DIR/tune.json. With further members (run folders or
checkpoints with the same vocabularies) the ensemble is tuned, since its best beam and length
penalty need not be a single model's; `nmt translate RUN_DIR MEMBER...` takes the first
model's settings, so they go into RUN_DIR.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from nmt import config
from nmt.data.dataset import Prepared
from nmt.decoding.translator import Translator
from nmt.errors import NmtError
from nmt.score import score_lines
from nmt.utils import lock
from nmt.utils.files import atomic_write

log = logging.getLogger("nmt")


@dataclass(frozen=True)
class Trial:
    beam_size: int
    length_penalty: float
    bleu: float
    seconds: float


@dataclass(frozen=True)
class Tuning:
    trials: list[Trial]
    best: Trial
    before: Trial  # the run's settings before tuning (also among the trials)


def tune(
    run_dir: Path,
    beam_sizes: list[int],
    length_penalties: list[float],
    device: str = "auto",
    write: bool = True,
    members: Sequence[Path] = (),
) -> Tuning:
    """Try every (beam size, length penalty) pair on the validation set; with `write`, store
    the best in RUN_DIR/recipe.yaml. The run's own settings are always tried too, and stay
    unless another pair scores strictly higher. `members` (run folders or checkpoints) make an
    ensemble with RUN_DIR, decoded as `nmt translate RUN_DIR MEMBER...` decodes it."""
    recipe_path = run_dir / "recipe.yaml"
    if not recipe_path.is_file():
        raise NmtError(f"{run_dir} is not a run folder (no recipe.yaml); train it first")
    if not beam_sizes or not length_penalties:
        raise NmtError("give at least one beam size and one length penalty")
    if min(beam_sizes) < 1 or min(length_penalties) < 0:
        raise NmtError("beam sizes must be >= 1 and length penalties >= 0")
    held = lock.hold(run_dir, "tune") if write else contextlib.nullcontext()
    with held:
        return _tune(run_dir, recipe_path, beam_sizes, length_penalties, device, write, members)


def _tune(
    run_dir: Path,
    recipe_path: Path,
    beam_sizes: list[int],
    length_penalties: list[float],
    device: str,
    write: bool,
    members: Sequence[Path],
) -> Tuning:
    recipe = config.load(recipe_path)
    sources, references = Prepared.open(recipe.prepared_dir).raw_valid()
    translator = Translator.load([run_dir, *members], device=device, method="beam")
    current = (translator.decode.beam_size, translator.decode.length_penalty)
    pairs = list(dict.fromkeys([current, *itertools.product(beam_sizes, length_penalties)]))
    base = translator.decode
    trials = []
    for i, (beam, alpha) in enumerate(pairs, start=1):
        started = time.perf_counter()
        translator.decode = dataclasses.replace(base, beam_size=beam, length_penalty=alpha)
        bleu = score_lines(translator.translate(sources), [references])[0].score
        trials.append(Trial(beam, alpha, bleu, time.perf_counter() - started))
        log.info(f"[{i}/{len(pairs)}] beam {beam}, length penalty {alpha}: valid BLEU {bleu:.2f}")
    before = trials[0]
    best = max(trials, key=lambda t: t.bleu)  # the first of equals: the run's own settings
    result = Tuning(trials, best, before)
    if write:
        _write(run_dir, recipe, result, members)
    return result


def _write(run_dir: Path, recipe: config.Recipe, result: Tuning, members: Sequence[Path]) -> None:
    decode = dataclasses.replace(
        recipe.decode,
        method="beam",
        beam_size=result.best.beam_size,
        length_penalty=result.best.length_penalty,
    )
    config.dump(dataclasses.replace(recipe, decode=decode), run_dir / "recipe.yaml")
    with atomic_write(run_dir / "tune.json") as f:
        record = {
            "chosen": dataclasses.asdict(result.best),
            "before": dataclasses.asdict(result.before),
            "trials": [dataclasses.asdict(t) for t in result.trials],
            "on": "validation set",
        }
        if members:
            # The settings suit this ensemble: say so, so nobody reads them as the model's own.
            record["ensemble"] = [str(run_dir), *map(str, members)]
        f.write(json.dumps(record, indent=2) + "\n")
