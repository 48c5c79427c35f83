"""Lines in and out of `nmt translate`: requests read from plain text (with prefixes and
constraints in step) or JSON lines, and translations written as text, n-best lines or JSON
lines, with attention heatmaps on the way.

The library's `Translator` takes `Request`s and gives `Translation`s; this is the file format
around them, so that the CLI only parses its flags and joins the pieces.
"""

from __future__ import annotations

import itertools
import json
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from nmt.decoding.records import ReferenceScore, Request, Translation
from nmt.errors import NmtError
from nmt.utils.files import write_lines

# (source line, its n-best translations), as Translator.stream_nbest yields them.
Records = Iterator[tuple[str, list[Translation]]]


def requests(
    lines: Iterable[str],
    prefixes: Iterable[str] | None = None,
    constraints: Iterable[str] | None = None,
    jsonl: bool = False,
) -> Iterator[Request]:
    """Requests from input lines: plain text, with `prefixes` (one target prefix per line, an
    empty line for none) and `constraints` (one JSON list of target phrases per line) in step;
    or, with `jsonl`, one JSON object per line: {"source": ..., "prefix": ..., "constraints":
    [...]}. Mismatched line counts and malformed lines end in one clear error."""
    sides: dict[str, Iterable[str]] = {"input": lines}
    if prefixes is not None:
        sides["--prefix"] = prefixes
    if constraints is not None:
        sides["--constraints"] = constraints
    for number, row in enumerate(in_step(sides), start=1):
        if jsonl:
            yield _jsonl_request(row["input"], number)
            continue
        phrases: tuple[str, ...] = ()
        if "--constraints" in row:
            phrases = _phrases(row["--constraints"], number, "--constraints")
        yield Request(row["input"], row.get("--prefix", ""), phrases)


def in_step(sides: dict[str, Iterable[str]]) -> Iterator[dict[str, str]]:
    """One line of each named stream at a time; streams of different lengths are an error
    naming them."""
    iterators = {name: iter(lines) for name, lines in sides.items()}
    for number in itertools.count(1):
        row = {name: next(it, None) for name, it in iterators.items()}
        if all(v is None for v in row.values()):
            return
        missing = [name for name, v in row.items() if v is None]
        if missing:
            longer = [name for name, v in row.items() if v is not None]
            raise NmtError(
                f"{', '.join(missing)} ended at line {number - 1}, but {', '.join(longer)} "
                "goes on: give one line for each input line"
            )
        yield row  # type: ignore[misc]


def _phrases(text: str, number: int, where: str) -> tuple[str, ...]:
    if not text.strip():
        return ()
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = None
    return _phrase_list(value, number, where)


def _phrase_list(value: object, number: int, where: str) -> tuple[str, ...]:
    """A parsed constraints value: a list of non-empty phrases, or one clear error."""
    if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
        raise NmtError(f'{where}, line {number}: expected a JSON list of phrases, e.g. ["rot"]')
    if any(not p.strip() for p in value):
        raise NmtError(f"{where}, line {number}: an empty constraint phrase")
    return tuple(value)


def _jsonl_request(text: str, number: int) -> Request:
    try:
        record = json.loads(text)
    except json.JSONDecodeError:
        record = None
    if not isinstance(record, dict) or not isinstance(record.get("source"), str):
        raise NmtError(f'input, line {number}: expected a JSON object with a "source" string')
    unknown = set(record) - {"source", "prefix", "constraints"}
    if unknown:
        raise NmtError(f"input, line {number}: unknown field(s) {', '.join(sorted(unknown))}")
    prefix = record.get("prefix") or ""
    if not isinstance(prefix, str):
        raise NmtError(f'input, line {number}: "prefix" must be a string')
    phrases = _phrase_list(record.get("constraints") or [], number, "input")
    return Request(record["source"], prefix, phrases)


def jsonl_record(
    index: int, source: str, translations: list[Translation], source_pieces: list[str] | None
) -> dict:
    """One input line's JSON record: its index, source, n-best translations (and the source's
    subwords, which alignments index)."""
    record: dict[str, Any] = {
        "id": index,
        "source": source,
        "nbest": [t.as_dict() for t in translations],
    }
    if source_pieces is not None:
        record["source_tokens"] = source_pieces
    return record


def text_lines(records: Records, nbest: int) -> Iterator[str]:
    """The best translation per input line; with `nbest` > 1, N lines 'index<TAB>score<TAB>
    translation' per input line (fairseq's and Marian's n-best layout)."""
    for index, (_, translations) in enumerate(records):
        if nbest == 1:
            yield translations[0].text
        else:
            for t in translations:
                yield f"{index}\t{t.norm_score:.4f}\t{t.text}"


def jsonl_lines(records: Records, source_pieces: Callable | None = None) -> Iterator[str]:
    """One JSON object per input line; with `source_pieces` (the source tokenizer's), the
    source's subwords too, which the alignments index."""
    for index, (source, translations) in enumerate(records):
        pieces = None
        if source_pieces is not None and source.strip():
            pieces = source_pieces(source) + ["</s>"]
        yield json.dumps(jsonl_record(index, source, translations, pieces), ensure_ascii=False)


def reference_score_lines(
    scored: Iterator[tuple[str, str, ReferenceScore]], output_format: str
) -> Iterator[str]:
    """--score-reference's output: 'sum<TAB>per token' per line, or JSON objects."""
    for index, (source, reference, result) in enumerate(scored):
        if output_format == "text":
            yield f"{result.score:.6f}\t{result.per_token:.6f}"
        else:
            record = {"id": index, "source": source, "reference": reference, **vars(result)}
            yield json.dumps(record, ensure_ascii=False)


def with_attention_plots(records: Records, folder: Path, source_pieces: Callable) -> Records:
    """Pass records through, writing each best translation's attention heatmap on the way."""
    from nmt.utils.plot import attention_heatmap

    for index, (source, translations) in enumerate(records, start=1):
        best = translations[0]
        if best.attention is not None:
            path = folder / f"{index:06d}.png"
            attention_heatmap(
                best.attention, source_pieces(source) + ["</s>"], best.pieces, path, best.text
            )
        yield source, translations


def emit(lines: Iterator[str], output: Path | None) -> None:
    """Each line to stdout as soon as it is ready, or all of them to `output` atomically."""
    if output is None:
        for line in lines:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
    else:
        write_lines(output, lines)
