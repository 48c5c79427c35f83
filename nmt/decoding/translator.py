"""Translate text with a trained model: load a checkpoint (or an exported folder), batch and
sort input, keep the order.

Input is read in buffers; each buffer is sorted by length so batches hold sentences of similar
length (little padding), decoded, and written back in input order before the next buffer is
read. Empty lines give empty lines without touching the model.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from nmt import checkpoint, config
from nmt.config import DecodeConfig
from nmt.data.batches import batches_by_size
from nmt.data.tokenizer import UNK, Tokenizer
from nmt.decoding import ct2
from nmt.decoding import shortlist as lexical
from nmt.decoding.ct2 import CTranslate2Engine
from nmt.decoding.engine import TorchEngine
from nmt.decoding.lines import in_step
from nmt.decoding.records import ReferenceScore, Request, Translation
from nmt.decoding.search import Guide, Hypothesis, length_penalty, pause
from nmt.errors import NmtError
from nmt.models.base import count_parameters
from nmt.models.builder import load_model
from nmt.models.ensemble import Ensemble
from nmt.models.quantize import QUANTIZE_CHOICES, quantize_int8
from nmt.models.transformer import Transformer
from nmt.utils.device import resolve_device, resolve_precision

log = logging.getLogger("nmt")


class Translator:
    """Lines in, translations out: input cut to the model's limit, sorted into batches of
    similar length, decoded by an engine (`TorchEngine`, our own search over a checkpoint's
    model; or `CTranslate2Engine`, for a folder written by `nmt export`), put back in order."""

    def __init__(
        self,
        engine: TorchEngine | CTranslate2Engine,
        src_tok: Tokenizer,
        tgt_tok: Tokenizer,
        decode: DecodeConfig,
        info: dict[str, Any] | None = None,
    ) -> None:
        self.engine = engine
        self.src_tok, self.tgt_tok = src_tok, tgt_tok
        self.decode = decode
        # Where the model came from: checkpoint path, step, recipe (for /models and logs).
        self.info = info or {}
        self.truncated = 0  # input lines cut to the model's longest source

    @property
    def model(self) -> Any:
        return self.engine.model

    @property
    def device(self) -> torch.device:
        return self.engine.device

    @property
    def precision(self) -> str:
        return self.engine.precision

    @classmethod
    def load(
        cls,
        path: str | Path | Sequence[str | Path],
        device: str = "auto",
        precision: str = "auto",
        quantize: str = "none",
        compile: bool = False,
        shortlist: bool = False,
        **decode_overrides: Any,
    ) -> Translator:
        """A translator for one checkpoint or run folder, or for an ensemble of several.

        A run folder gives the checkpoint it selected (see nmt.checkpoint.resolve) and the
        decoding settings of its recipe.yaml (where `nmt tune` writes them); a checkpoint file
        gives its own recipe's. The first model's settings apply to an ensemble; keyword
        arguments (None: keep) override them. `quantize="int8"` quantizes the linear layers
        (CPU only). `compile=True` takes a Transformer's decoding steps through torch.compile
        (nmt.models.incremental; the first batches of each shape wait for the compiler).
        `shortlist=True` decodes each batch over a lexical shortlist built from the run's
        training data (nmt.decoding.shortlist). A folder written by `nmt export` is decoded by
        CTranslate2 (nmt.decoding.ct2)."""
        if quantize not in QUANTIZE_CHOICES:
            raise NmtError(
                f"unknown quantization '{quantize}'; choose from {', '.join(QUANTIZE_CHOICES)}"
            )
        if compile and quantize == "int8":
            raise NmtError(
                "--compile and --quantize int8 do not go together: the compiled step is the "
                "float model's; choose one"
            )
        first = path if isinstance(path, (str, Path)) else next(iter(path), None)
        if first is not None and ct2.is_export(first):
            if compile or shortlist:
                option = "--compile" if compile else "--shortlist"
                raise NmtError(f"{first} is a CTranslate2 export: {option} is for nmt's own models")
            engine, src_tok, tgt_tok, decode, info = ct2.load_export(
                path, device, precision, quantize, **decode_overrides
            )
            return cls(engine, src_tok, tgt_tok, decode, info)
        dev = resolve_device(device)
        paths = [path] if isinstance(path, (str, Path)) else list(path)
        if not paths:
            raise NmtError("no checkpoint given")
        first = checkpoint.resolve(paths[0])
        if Path(paths[0]).is_dir() and checkpoint.read_selection(Path(paths[0])):
            log.info(f"using {first}{_selection_note(Path(paths[0]))}")
        state = checkpoint.load(first)
        recipe, model, src_tok, tgt_tok = load_model(state, first)
        decode = recipe.decode
        run_recipe = Path(paths[0]) / "recipe.yaml"
        if Path(paths[0]).is_dir() and run_recipe.is_file():
            decode = config.read_decode(run_recipe)
        if len(paths) > 1:
            members = [model]
            for other in paths[1:]:
                other_state = checkpoint.load(other)
                if not checkpoint.same_tokenizers(other_state["tokenizers"], state["tokenizers"]):
                    raise NmtError(
                        f"{other} has other vocabularies than {paths[0]}; an ensemble needs "
                        "models trained with the same SentencePiece models"
                    )
                members.append(load_model(other_state, other)[1])
            model = Ensemble(members)
        decode = config.override_decode(decode, **decode_overrides)
        model.to(dev).eval()
        parameters = count_parameters(model)
        resolved = resolve_precision(precision, dev)
        if quantize == "int8":
            if resolved != "fp32":
                raise NmtError(f"--quantize int8 needs fp32 activations, not {resolved}")
            quantize_int8(model)
        if compile and not model.compile_decoding():
            raise NmtError("--compile needs a Transformer model; RNN models decode eagerly")
        info = {
            "checkpoint": str(first),
            "step": state.get("step"),
            "recipe": recipe,
            # Counted before int8 quantization, which would hide the quantized weights.
            "parameters": parameters,
        }
        words = None
        if shortlist:
            members = model.models if isinstance(model, Ensemble) else [model]
            if not all(isinstance(m, Transformer) for m in members):
                raise NmtError("--shortlist needs a Transformer model; RNN models decode without")
            run_dir = Path(paths[0]) if Path(paths[0]).is_dir() else Path(first).parent
            words = lexical.for_run(run_dir, recipe.prepared_dir)
        engine = TorchEngine(model, dev, resolved, decode.sampling_seed, words)
        return cls(engine, src_tok, tgt_tok, decode, info)

    def _encode(self, lines: list[str], cut: set[int] | None = None) -> list[list[int]]:
        """The source ids of `lines`, each cut to the model's longest source; the positions of
        the lines that were cut go into `cut`."""
        limit = self.engine.max_source_length
        ids = self.src_tok.encode(lines)
        for i, seq in enumerate(ids):
            if len(seq) > limit:
                self.truncated += 1
                log.warning(f"an input line of {len(seq)} tokens was cut to {limit} tokens")
                ids[i] = seq[:limit]
                if cut is not None:
                    cut.add(i)
        return ids

    def translate_nbest(
        self,
        lines: list[str],
        nbest: int = 1,
        alignment: bool = False,
        attention: bool = False,
        *,
        prefixes: Sequence[str] | None = None,
        constraints: Sequence[Sequence[str]] | None = None,
        decode: DecodeConfig | None = None,
        first_line: int = 1,
    ) -> list[list[Translation]]:
        """Each input line's `nbest` best translations (one for greedy), best first; an empty
        line gets one empty translation without touching the model. With `alignment` (or
        `attention`), each translation carries its cross-attention alignment (or weights).

        `prefixes` (one per line, "" for none) are target texts each translation continues;
        `constraints` (a list of target phrases per line) must all appear in it (beam search
        only). `decode` replaces the translator's decoding settings for this call; `first_line`
        numbers the lines in errors."""
        _check_lines(lines, first_line)
        if isinstance(nbest, bool) or not isinstance(nbest, int) or nbest < 1:
            raise NmtError(f"nbest must be a whole number of at least 1, got {nbest!r}")
        decode = decode or self.decode
        outputs: list[list[Translation]] = [[Translation("", 0.0, 0.0)] for _ in lines]
        todo = [i for i, line in enumerate(lines) if line.strip()]
        cut: set[int] = set()
        ids = self._encode([lines[i] for i in todo], cut)
        guide = self._guide(lines, todo, prefixes, constraints, decode, first_line)
        # Longest first: the costliest batch runs (and fails, if memory is short) early.
        order = sorted(range(len(todo)), key=lambda j: len(ids[j]), reverse=True)
        sizes = [len(ids[j]) + 1 for j in order]  # with EOS
        found: dict[int, list[Hypothesis]] = {}
        for batch in batches_by_size(order, sizes, decode.batch_tokens, decode.batch_size):
            part = None
            if guide is not None:
                part = Guide(
                    [guide.prefixes[b] for b in batch], [guide.constraints[b] for b in batch]
                )
                if not any(part.prefixes) and not any(part.constraints):
                    part = None
            hyp_lists = self.engine.search([ids[b] for b in batch], nbest, decode, part)
            found.update(zip(batch, hyp_lists))
        done = list(found)
        hyp_lists, text_lists = self._as_texts(
            [ids[b] for b in done], [found[b] for b in done], decode
        )
        for b, hyps, texts in zip(done, hyp_lists, text_lists):
            weights: list = [None] * len(hyps)
            if alignment or attention:
                pause()  # a point where a server may decode other requests
                weights = self.engine.cross_attention(ids[b], [h.tokens for h in hyps])
            outputs[todo[b]] = [
                Translation(
                    t,
                    h.score,
                    h.norm_score,
                    w.argmax(dim=-1).tolist() if alignment else None,
                    w.tolist() if attention else None,
                    self.tgt_tok.id_pieces(h.tokens) + ["</s>"] if alignment or attention else None,
                    b in cut,
                )
                for t, h, w in zip(texts, hyps, weights)
            ]
        return outputs

    def _as_texts(
        self, sources: list[list[int]], hyp_lists: list[list[Hypothesis]], decode: DecodeConfig
    ) -> tuple[list[list[Hypothesis]], list[list[str]]]:
        """Each sentence's hypotheses with their texts. A hypothesis that is not SentencePiece's
        own segmentation of its text (a lone "▁" before a word, which decodes to a double space,
        or a word in other pieces) becomes that segmentation, scored by forced decoding: the
        score of an output is then the score of its text as a reference (`--score-reference`),
        and an output never holds a double space. Hypotheses that become one merge (the better
        kept); each list stays best first. One forced decoding for all of them."""
        flat = [(i, h) for i, hyps in enumerate(hyp_lists) for h in hyps]
        texts = self.tgt_tok.decode([h.tokens for _, h in flat])
        again = self.tgt_tok.encode(texts)
        limit = self.engine.max_output_length
        odd = [
            j
            for j, ((_, h), ids) in enumerate(zip(flat, again))
            if ids != h.tokens and h.score != -math.inf and len(ids) <= limit
        ]
        if not odd:
            ordered = iter(texts)
            return hyp_lists, [[next(ordered) for _ in hyps] for hyps in hyp_lists]
        scores = self.engine.score(
            [sources[flat[j][0]] for j in odd], [again[j] for j in odd], decode
        )
        for j, scored in zip(odd, scores):
            penalty = length_penalty(scored.tokens, decode.length_penalty)
            flat[j] = (flat[j][0], Hypothesis(again[j], scored.score, scored.score / penalty))
        merged: list[dict[tuple[int, ...], Hypothesis]] = [{} for _ in hyp_lists]
        for i, h in sorted(flat, key=lambda item: item[1].norm_score, reverse=True):
            merged[i].setdefault(tuple(h.tokens), h)
        hyp_lists = [list(m.values()) for m in merged]
        decoded = iter(self.tgt_tok.decode([h.tokens for hyps in hyp_lists for h in hyps]))
        return hyp_lists, [[next(decoded) for _ in hyps] for hyps in hyp_lists]

    def _guide(
        self,
        lines: list[str],
        todo: list[int],
        prefixes: Sequence[str] | None,
        constraints: Sequence[Sequence[str]] | None,
        decode: DecodeConfig,
        first_line: int,
    ) -> Guide | None:
        """The target prefixes and constraint phrases of the non-empty lines, as token ids;
        one clear line for what cannot be decoded."""
        if not prefixes and not constraints:
            return None
        for name, given in (("prefixes", prefixes), ("constraints", constraints)):
            if given is not None and len(given) != len(lines):
                raise NmtError(f"{len(given)} {name} for {len(lines)} input lines; give one each")
        prefix_ids = [[] for _ in todo]
        if prefixes is not None:
            texts = [prefixes[i] for i in todo]
            encoded = self.tgt_tok.encode([t for t in texts if t.strip()])
            it = iter(encoded)
            prefix_ids = [next(it) if t.strip() else [] for t in texts]
        phrase_ids: list[list[list[int]]] = [[] for _ in todo]
        if constraints is not None:
            if any(constraints[i] for i in todo) and decode.method != "beam":
                raise NmtError("constraints need beam search; drop --greedy / --sample")
            for j, i in enumerate(todo):
                for phrase in constraints[i]:
                    if not isinstance(phrase, str) or not phrase.strip():
                        raise NmtError(f"input, line {first_line + i}: an empty constraint phrase")
                phrase_ids[j] = self.tgt_tok.encode(list(constraints[i]))
        limit = self.engine.max_output_length
        for j, i in enumerate(todo):
            prefix = prefixes[i] if prefixes is not None else ""
            phrases = constraints[i] if constraints is not None else []
            given = [("prefix", prefix, prefix_ids[j])]
            given += [("constraint", text, ids) for text, ids in zip(phrases, phrase_ids[j])]
            for what, text, ids in given:
                if UNK in ids:
                    missing = " ".join(self.tgt_tok.unknown_characters(text))
                    raise NmtError(
                        f"input, line {first_line + i}: the {what} {text!r} holds characters "
                        f"the target vocabulary lacks ({missing}); they would come out as ⁇, "
                        "so rephrase it without them"
                    )
            needed = len(prefix_ids[j]) + sum(map(len, phrase_ids[j]))
            if needed > limit:
                raise NmtError(
                    f"input, line {first_line + i}: its prefix and constraints need {needed} "
                    f"target tokens, more than the model's {limit}"
                )
        return Guide(prefix_ids, phrase_ids)

    def score_references(
        self, lines: list[str], references: list[str], first_line: int = 1
    ) -> list[ReferenceScore]:
        """Forced decoding: the model's log-probability of each reference (its tokens and
        EOS) given its source line, as the search would score that output. `first_line`
        numbers the lines in errors (a reference longer than the model allows)."""
        _check_lines(lines, first_line)
        _check_lines(references, first_line, "--score-reference")
        if len(references) != len(lines):
            raise NmtError(f"{len(references)} references for {len(lines)} input lines")
        refs = self.tgt_tok.encode(references)
        limit = self.engine.max_output_length
        for number, ref in enumerate(refs, start=first_line):
            if len(ref) > limit:
                raise NmtError(
                    f"--score-reference, line {number}: the reference has {len(ref)} tokens, "
                    f"more than the model's limit of {limit}"
                )
        return self.score_ids(self._encode(lines), refs)

    def score_ids(self, ids: list[list[int]], refs: list[list[int]]) -> list[ReferenceScore]:
        """`score_references` on token ids (sources without EOS, targets without BOS/EOS), for
        outputs that are not SentencePiece's own segmentation of their text."""
        return self.engine.score(ids, refs, self.decode)

    def translate(self, lines: list[str]) -> list[str]:
        """Translate a list of sentences; returns one output line per input line, in order."""
        return [best[0].text for best in self.translate_nbest(lines)]

    def stream_nbest(
        self,
        lines: Iterable[str | Request],
        nbest: int = 1,
        buffer_lines: int = 1000,
        alignment: bool = False,
        attention: bool = False,
    ) -> Iterator[tuple[str, list[Translation]]]:
        """(source, n-best translations) per input line, buffer by buffer, in input order.
        An item may be a `Request`, to give its line a target prefix or constraints."""
        it = iter(lines)
        first = 1
        while buffer := list(itertools.islice(it, buffer_lines)):
            requests = [b if isinstance(b, Request) else Request(b) for b in buffer]
            sources = [r.source.rstrip("\r\n") for r in requests]
            guided = any(r.prefix or r.constraints for r in requests)
            translations = self.translate_nbest(
                sources,
                nbest,
                alignment,
                attention,
                prefixes=[r.prefix for r in requests] if guided else None,
                constraints=[list(r.constraints) for r in requests] if guided else None,
                first_line=first,
            )
            yield from zip(sources, translations)
            first += len(buffer)


def _check_lines(lines: object, first_line: int, where: str = "input") -> None:
    """Lines are a list of strings of Unicode text: one string alone would be translated
    character by character, and anything else (a lone UTF-16 surrogate, which JSON's \\ud800
    escapes can carry, included) fails deep inside SentencePiece."""
    if isinstance(lines, (str, bytes)):
        raise NmtError(f"{where}: expected a list of lines, got one string; wrap it in a list")
    for number, line in enumerate(lines, start=first_line):  # type: ignore[arg-type]
        if not isinstance(line, str):
            raise NmtError(f"{where}, line {number}: expected a string, got {type(line).__name__}")
        surrogate = lone_surrogate(line)
        if surrogate is not None:
            raise NmtError(
                f"{where}, line {number}: holds a lone surrogate (U+{ord(surrogate):04X}), "
                "which is not Unicode text; send valid UTF-8 or a surrogate pair"
            )


def lone_surrogate(text: str) -> str | None:
    """The first code point of `text` in U+D800..U+DFFF (one that UTF-8 cannot encode), if any."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return text[e.start]
    return None


def reference_scores(
    translator: Translator,
    lines: Iterable[str],
    references: Iterable[str],
    buffer_lines: int = 1000,
) -> Iterator[tuple[str, str, ReferenceScore]]:
    """(source, reference, its score) per line pair, buffer by buffer, in input order."""
    pairs = in_step({"input": lines, "--score-reference": references})
    first = 1
    while buffer := list(itertools.islice(pairs, buffer_lines)):
        sources = [row["input"] for row in buffer]
        refs = [row["--score-reference"] for row in buffer]
        yield from zip(sources, refs, translator.score_references(sources, refs, first))
        first += len(buffer)


def _selection_note(run_dir: Path) -> str:
    """Why a run folder's checkpoint was chosen, for the log line."""
    scores = checkpoint.read_selection(run_dir)
    parts = ", ".join(f"{name} {bleu:.2f}" for name, bleu in scores.items())
    return f", the higher on validation BLEU ({parts})"
