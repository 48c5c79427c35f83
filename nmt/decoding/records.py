"""What goes into a translation and what comes out: a `Request` (a line, with an optional target
prefix and constraints), a `Translation` (text, scores, and on request the alignment and
attention), a `ReferenceScore` (a given reference's log-probability)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Request:
    """One line to translate, with an optional target prefix to continue and target phrases
    that must appear in its translation."""

    source: str
    prefix: str = ""
    constraints: tuple[str, ...] = ()


@dataclass(frozen=True)
class Translation:
    text: str
    score: float  # sum of the token log-probabilities, EOS included
    norm_score: float  # score / GNMT length penalty: what beam search ranks by
    # For each target subword (EOS included), the source subword position (EOS = the last) it
    # attends to most, averaged over the heads of the last decoder layer's cross-attention.
    alignment: list[int] | None = None
    # The attention weights themselves (target positions × source positions), when asked for.
    attention: list[list[float]] | None = None
    # The target subwords those positions are (EOS as "</s>"), with alignments or attention.
    pieces: list[str] | None = None
    # The source line was longer than the model takes and was cut to its first tokens.
    truncated: bool = False

    def as_dict(self) -> dict:
        """The JSON form (the CLI's jsonl output): text and scores, plus the subword tokens and
        alignment when they were asked for."""
        record: dict[str, Any] = {
            "translation": self.text,
            "score": self.score,
            "norm_score": self.norm_score,
        }
        if self.alignment is not None:
            record["tokens"], record["alignment"] = self.pieces, self.alignment
        if self.truncated:
            record["truncated"] = True
        return record


@dataclass(frozen=True)
class ReferenceScore:
    """A reference's log-probability under the model (forced decoding), EOS included."""

    score: float  # the sum over its tokens
    per_token: float  # the mean
    tokens: int  # target tokens scored, EOS included
