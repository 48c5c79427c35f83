"""Translate text with a trained model: load a checkpoint, batch and sort input, keep the order.

Input is read in buffers; each buffer is sorted by length so batches hold sentences of similar
length (little padding), decoded, and written back in input order before the next buffer is
read. Empty lines give empty lines without touching the model.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nmt import checkpoint, config
from nmt.config import DecodeConfig, Recipe
from nmt.data import pad_sequences
from nmt.device import Precision, autocast, resolve_device, resolve_precision
from nmt.errors import NmtError
from nmt.model import Ensemble, Seq2Seq, build_model
from nmt.quantize import QUANTIZE_CHOICES, quantize_int8
from nmt.search import Hypothesis, Sampler, beam_search, greedy_search
from nmt.tokenizer import BOS, EOS, Tokenizer

log = logging.getLogger("nmt")


def model_from_checkpoint(
    state: dict[str, Any], path: Path | str = "checkpoint"
) -> tuple[Recipe, Seq2Seq, Tokenizer, Tokenizer]:
    """Rebuild the recipe, the model and both tokenizers from a loaded checkpoint."""
    try:
        recipe = config.from_dict(state["recipe"])
    except NmtError as e:
        raise NmtError(f"{path}: its recipe is invalid for this nmt ({e})") from None
    src_tok = Tokenizer(state["tokenizers"]["src"])
    tgt_tok = Tokenizer(state["tokenizers"]["tgt"])
    joint = state["tokenizers"]["src"] == state["tokenizers"]["tgt"]
    model = build_model(recipe.model, len(src_tok), len(tgt_tok), joint)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        # The first line only says "Error(s) in loading state_dict"; the next one says which.
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        first = lines[1] if len(lines) > 1 else lines[0]
        first = first if len(first) < 200 else first[:200] + "..."
        raise NmtError(
            f"{path}: weights do not match the model its recipe describes ({first})"
        ) from None
    return recipe, model, src_tok, tgt_tok


@dataclass(frozen=True)
class Translation:
    text: str
    score: float  # sum of the token log-probabilities, EOS included
    norm_score: float  # the score search ranks by (after the length penalty)
    # For each target subword (EOS included), the source subword position (EOS = the last) it
    # attends to most, averaged over the heads of the last decoder layer's cross-attention.
    alignment: list[int] | None = None
    # The attention weights themselves (target positions × source positions), when asked for.
    attention: list[list[float]] | None = None
    # The target subwords those positions are (EOS as "</s>"), with alignments or attention.
    pieces: list[str] | None = None


class Translator:
    def __init__(
        self,
        model: Seq2Seq | Ensemble,
        src_tok: Tokenizer,
        tgt_tok: Tokenizer,
        decode: DecodeConfig,
        device: torch.device,
        precision: Precision = "fp32",
    ) -> None:
        self.model = model
        self.src_tok, self.tgt_tok = src_tok, tgt_tok
        self.decode = decode
        self.device = device
        self.precision = precision
        self.truncated = 0  # input lines cut to the model's longest source
        # Sampling draws from its own seeded generator: the same seed, the same samples.
        self.generator = torch.Generator(device=device).manual_seed(decode.sampling_seed)

    @classmethod
    def load(
        cls,
        path: str | Path | Sequence[str | Path],
        device: str = "auto",
        precision: str = "auto",
        quantize: str = "none",
        **decode_overrides: Any,
    ) -> Translator:
        """A translator for one checkpoint, or for an ensemble of several (the first one's
        decoding settings apply). `quantize="int8"` quantizes the linear layers (CPU only)."""
        if quantize not in QUANTIZE_CHOICES:
            raise NmtError(
                f"unknown quantization '{quantize}'; choose from {', '.join(QUANTIZE_CHOICES)}"
            )
        dev = resolve_device(device)
        paths = [path] if isinstance(path, (str, Path)) else list(path)
        if not paths:
            raise NmtError("no checkpoint given")
        state = checkpoint.load(paths[0])
        recipe, model, src_tok, tgt_tok = model_from_checkpoint(state, paths[0])
        if len(paths) > 1:
            members = [model]
            for other in paths[1:]:
                other_state = checkpoint.load(other)
                if other_state["tokenizers"] != state["tokenizers"]:
                    raise NmtError(
                        f"{other} has other vocabularies than {paths[0]}; an ensemble needs "
                        "models trained with the same SentencePiece models"
                    )
                members.append(model_from_checkpoint(other_state, other)[1])
            model = Ensemble(members)
        overrides = {k: v for k, v in decode_overrides.items() if v is not None}
        decode = dataclasses.replace(recipe.decode, **overrides)
        decode.validate()
        model.to(dev).eval()
        resolved = resolve_precision(precision, dev)
        if quantize == "int8":
            if resolved != "fp32":
                raise NmtError(f"--quantize int8 needs fp32 activations, not {resolved}")
            quantize_int8(model)
        return cls(model, src_tok, tgt_tok, decode, dev, resolved)

    def _encode(self, lines: list[str]) -> list[list[int]]:
        limit = self.model.cfg.max_positions - 1  # room for EOS
        ids = self.src_tok.encode(lines)
        for i, seq in enumerate(ids):
            if len(seq) > limit:
                self.truncated += 1
                log.warning(f"an input line of {len(seq)} tokens was cut to {limit} tokens")
                ids[i] = seq[:limit]
        return ids

    def _decode_batch(self, batch: list[list[int]], nbest: int) -> list[list[Hypothesis]]:
        src = pad_sequences([torch.tensor(s) for s in batch], None, EOS).to(self.device)
        d = self.decode
        with autocast(self.device, self.precision):
            if d.method in ("greedy", "sample"):
                sampler = None
                if d.method == "sample":
                    sampler = Sampler(d.temperature, d.top_k, d.top_p, self.generator)
                hyps = greedy_search(
                    self.model, src, d.max_len_a, d.max_len_b, d.min_len, d.no_repeat_ngram, sampler
                )
                return [[h] for h in hyps]
            return beam_search(
                self.model,
                src,
                max(d.beam_size, nbest),
                d.length_penalty,
                d.max_len_a,
                d.max_len_b,
                nbest=nbest,
                min_len=d.min_len,
                no_repeat_ngram=d.no_repeat_ngram,
            )

    @torch.inference_mode()
    def cross_attention(self, src: list[int], hyps: list[list[int]]) -> list[torch.Tensor]:
        """The last decoder layer's cross-attention over `src` (+EOS) for each hypothesis
        (+EOS), averaged over heads, from one teacher-forced pass: the decoder is causal, so
        these are the weights the search saw when it chose each token."""
        n = len(hyps)
        src_t = pad_sequences([torch.tensor(src)] * n, None, EOS).to(self.device)
        tgt_in = pad_sequences([torch.tensor(h) for h in hyps], BOS, None).to(self.device)
        with autocast(self.device, self.precision):
            memory, pad_mask = self.model.encode(src_t)
            _, weights = self.model.decode(tgt_in, memory, pad_mask, need_weights=True)
        weights = weights.float().mean(dim=1)  # (n, T, S)
        return [weights[i, : len(h) + 1].cpu() for i, h in enumerate(hyps)]

    def translate_nbest(
        self, lines: list[str], nbest: int = 1, alignment: bool = False, attention: bool = False
    ) -> list[list[Translation]]:
        """Each input line's `nbest` best translations (one for greedy), best first; an empty
        line gets one empty translation without touching the model. With `alignment` (or
        `attention`), each translation carries its cross-attention alignment (or weights)."""
        outputs: list[list[Translation]] = [[Translation("", 0.0, 0.0)] for _ in lines]
        todo = [i for i, line in enumerate(lines) if line.strip()]
        ids = self._encode([lines[i] for i in todo])
        # Longest first: the costliest batch runs (and fails, if memory is short) early.
        order = sorted(range(len(todo)), key=lambda j: len(ids[j]), reverse=True)
        batch: list[int] = []
        width = 0
        most = self.decode.batch_size or len(order)
        for j in order + [None]:
            if j is not None:
                new_width = max(width, len(ids[j]) + 1)
                fits = new_width * (len(batch) + 1) <= self.decode.batch_tokens
                if not batch or (fits and len(batch) < most):
                    batch.append(j)
                    width = new_width
                    continue
            if batch:
                hyp_lists = self._decode_batch([ids[b] for b in batch], nbest)
                for b, hyps in zip(batch, hyp_lists):
                    texts = self.tgt_tok.decode([h.tokens for h in hyps])
                    weights: list = [None] * len(hyps)
                    if alignment or attention:
                        weights = self.cross_attention(ids[b], [h.tokens for h in hyps])
                    outputs[todo[b]] = [
                        Translation(
                            t,
                            h.score,
                            h.norm_score,
                            w.argmax(dim=-1).tolist() if alignment else None,
                            w.tolist() if attention else None,
                            self.tgt_tok.id_pieces(h.tokens) + ["</s>"]
                            if alignment or attention
                            else None,
                        )
                        for t, h, w in zip(texts, hyps, weights)
                    ]
            if j is not None:
                batch, width = [j], len(ids[j]) + 1
        return outputs

    def translate(self, lines: list[str]) -> list[str]:
        """Translate a list of sentences; returns one output line per input line, in order."""
        return [best[0].text for best in self.translate_nbest(lines)]

    def stream_nbest(
        self,
        lines: Iterable[str],
        nbest: int = 1,
        buffer_lines: int = 1000,
        alignment: bool = False,
        attention: bool = False,
    ) -> Iterator[tuple[str, list[Translation]]]:
        """(source, n-best translations) per input line, buffer by buffer, in input order."""
        it = iter(lines)
        while buffer := [line.rstrip("\r\n") for line in itertools.islice(it, buffer_lines)]:
            yield from zip(buffer, self.translate_nbest(buffer, nbest, alignment, attention))

    def stream(self, lines: Iterable[str], buffer_lines: int = 1000) -> Iterator[str]:
        """Translate an iterable of lines buffer by buffer, yielding outputs in input order."""
        it = iter(lines)
        while buffer := list(itertools.islice(it, buffer_lines)):
            yield from self.translate([line.rstrip("\r\n") for line in buffer])
