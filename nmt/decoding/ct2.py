"""Translate with a folder written by `nmt export --to ctranslate2`: CTranslate2 runs the search.

`Translator.load` of such a folder gives a Translator whose engine is a `CTranslate2Engine`:
the same input handling (buffers, length-sorted batches, input order, empty lines, over-long
lines cut) and the same Translation records as with a checkpoint; only the search, the
attention pass and reference scoring run in CTranslate2. Our options map onto its
translate_batch options as follows.

- beam_size K (raised to nbest) -> beam_size K, patience 1, num_hypotheses K. Both searches
  take the 2K best continuations, finish a hypothesis on an EOS among the top K, keep the first
  K others alive and end a sentence once K hypotheses have finished.
- length_penalty alpha: CTranslate2 divides a score by length ** beta, ours by GNMT's
  ((5 + length) / 6) ** alpha. It runs with beta = 1e-6, so that its own ranking is by
  log-probability (beta 0 would also end a sentence as soon as its best beam finishes); the
  finished hypotheses come back with EOS (return_end_token), their log-probabilities are taken
  back (score · length ** beta) and ranked by GNMT's penalty, as ours.
- max_len_a, max_len_b: our limit a · n + b (n: source tokens with EOS) holds per sentence and
  lets only EOS follow at the limit; CTranslate2 takes one max_decoding_length per batch and
  cuts a hypothesis there without EOS. A batch is decoded to its largest limit; a sentence
  still searching at the step before its own limit is decoded again with that limit (every
  step before it is the same at any limit), and a hypothesis cut at its limit is scored with
  EOS appended (score_batch), as ours.
- min_len, no_repeat_ngram -> min_decoding_length, no_repeat_ngram_size.
- greedy -> beam_size 1, sampling_topk 1; sample -> beam_size 1, sampling_topk top_k (0: all),
  sampling_topp top_p, sampling_temperature temperature. The seed seeds CTranslate2's own
  generator: the samples follow the same distribution, but are not ours.

When more hypotheses finish at the step that completes a sentence than it needs, ours keeps
the first K, CTranslate2 all of them, then the K best by its own score, here log-probability.
That never loses our best translation: to drop it, CTranslate2 needs K others with a higher
log-probability, so one of them finished at that last step after those ours kept; the one ours
kept there before it is at least as likely and no shorter, so its GNMT score (the loss divided
by a length term that grows with length) is at least as high: ours would have chosen it. Lower
n-best entries can differ, so with nbest > 1 such a sentence is decoded again up to that step
with every hypothesis kept (patience (2K - 1) / K) and the first K finished are taken, as ours
takes them.

What still differs:
- At the length limit, in beam search: a sentence whose search reaches the step before its
  limit ends there in CTranslate2 with its K best candidates, EOS or not (each scored with EOS
  as ours would), while ours finishes the EOS among them and gives the K best others (not only
  those among the top K) one more step, where only EOS may follow. Greedy search agrees.
- min_len and no_repeat_ngram: CTranslate2 bans tokens before its softmax, ours after it, so
  the other tokens' log-probabilities are higher there; scores move, and beam choices with them.
- PAD and BOS: ours masks them after the softmax. CTranslate2 can only suppress them before it,
  which moves every score a little, so only a sentence where it produced one is decoded again
  with them suppressed.
- Sums and products in another order: log-probabilities differ by about 1e-5, enough to swap
  two hypotheses whose scores tie that closely.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from nmt import config
from nmt.config import DecodeConfig
from nmt.data.batches import pad_sequences
from nmt.data.tokenizer import BOS, EOS, PAD, Tokenizer
from nmt.decoding.records import ReferenceScore
from nmt.decoding.search import Guide, Hypothesis, length_penalty, max_lengths
from nmt.errors import NmtError

log = logging.getLogger("nmt")

EXPORT_FILE = "nmt_export.json"  # what marks a folder as written by `nmt export`
FORMATS = ("ctranslate2",)


def require_ctranslate2() -> Any:
    """The ctranslate2 module, or one clear line saying how to install it."""
    try:
        import ctranslate2
    except ImportError:
        raise NmtError(
            "CTranslate2 is not installed; pip install 'nmt[ctranslate2]' (or ctranslate2)"
        ) from None
    return ctranslate2


def is_export(path: str | Path) -> bool:
    """Whether `path` is a folder written by `nmt export`."""
    return (Path(path) / EXPORT_FILE).is_file()


def read_metadata(folder: Path) -> dict:
    """The export's own file, checked for what decoding it needs."""
    path = folder / EXPORT_FILE
    try:
        metadata = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise NmtError(f"{path} is unreadable ({e}); export the model again") from None
    needed = ("format", "source_tokenizer", "target_tokenizer", "max_positions")
    missing = [key for key in needed if key not in metadata]
    if missing or metadata["format"] not in FORMATS:
        what = f"lacks {', '.join(missing)}" if missing else f"has format {metadata['format']!r}"
        raise NmtError(f"{path} {what}; export the model again with this nmt")
    return metadata


# CTranslate2's length penalty in beam search: nonzero, so that a sentence ends after K finished
# hypotheses, and too small to rank them otherwise than by log-probability.
BETA = 1e-6

# CTranslate2 compute types for our --precision, without and with --quantize int8.
COMPUTE_TYPES = {
    "none": {"auto": "default", "fp32": "float32", "bf16": "bfloat16", "fp16": "float16"},
    "int8": {
        "auto": "int8",
        "fp32": "int8_float32",
        "bf16": "int8_bfloat16",
        "fp16": "int8_float16",
    },
}


class CTranslate2Engine:
    """A CTranslate2 translator over an exported folder, with the methods of
    nmt.decoding.engine.TorchEngine."""

    def __init__(
        self, translator: Any, max_positions: int, src_tok: Tokenizer, tgt_tok: Tokenizer
    ) -> None:
        self.translator = translator  # ctranslate2.Translator
        self.max_positions = max_positions
        self.src_tok, self.tgt_tok = src_tok, tgt_tok
        self.tgt_ids = {piece: i for i, piece in enumerate(tgt_tok.id_pieces(range(len(tgt_tok))))}
        self.eos = tgt_tok.id_pieces([EOS])[0]
        self.never = set(tgt_tok.id_pieces([PAD, BOS]))

    @property
    def model(self) -> Any:
        return self.translator

    @property
    def device(self) -> str:
        return self.translator.device

    @property
    def precision(self) -> str:
        return self.translator.compute_type

    @property
    def max_source_length(self) -> int:
        return self.max_positions - 1  # room for EOS

    @property
    def max_output_length(self) -> int:
        return self.max_positions - 1  # room for BOS

    def search(
        self,
        batch: list[list[int]],
        nbest: int,
        decode: DecodeConfig,
        guide: Guide | None = None,
    ) -> list[list[Hypothesis]]:
        if guide is not None:
            raise NmtError(
                "prefixes and constraints are decoded by nmt's own search: translate the run "
                "folder or checkpoint, not the CTranslate2 export"
            )
        d = decode
        beam = d.method == "beam"
        k = max(d.beam_size, nbest) if beam else 1
        src = pad_sequences([torch.tensor(s) for s in batch], None, EOS)
        limits = max_lengths(src, d.max_len_a, d.max_len_b, self.max_output_length)
        pieces = [self.src_tok.id_pieces(s) for s in batch]
        longest = max(limits)
        found = self._search(pieces, longest, k, d)
        # Sentences to decode again, by max_decoding_length, keeping every hypothesis.
        again: dict[int, list[int]] = {}
        for i, hyps in enumerate(found):
            last = max(len(h.tokens) for h in hyps)  # the step that ended the sentence
            if last >= limits[i] - 1:
                # It reached the step before its own limit, where the batch's limit may differ,
                # and there CTranslate2 finishes K more: some finished before may have gone.
                if beam or limits[i] < longest:
                    again.setdefault(limits[i], []).append(i)
            elif nbest > 1 and sum(len(h.tokens) == last for h in hyps) > 1:
                # More finished at its last step than it needed, maybe (see the docstring).
                again.setdefault(last + 1, []).append(i)
        for limit, rows in again.items():
            redone = self._search([pieces[i] for i in rows], limit, k, d, every=True)
            for i, hyps in zip(rows, redone):
                if limit < limits[i]:  # its last step, not its limit: what did not end goes
                    hyps = [h for h in hyps if len(h.tokens) < limit]
                # Ours keeps the first K finished: earlier steps first, then the better.
                found[i] = sorted(hyps, key=lambda h: (len(h.tokens), -h.score))[:k]
        return [sorted(hyps, key=lambda h: h.norm_score, reverse=True)[:nbest] for hyps in found]

    def _search(
        self,
        pieces: list[list[str]],
        limit: int,
        k: int,
        d: DecodeConfig,
        every: bool = False,
    ) -> list[list[Hypothesis]]:
        """The finished hypotheses of each sentence with max_decoding_length `limit`: K at
        most (when more finish at once CTranslate2 keeps the K best of its own ranking), or,
        with `every` and sentences that do not end before `limit`, all of them: the K - 1 at
        most finished before and the K candidates its last step finishes (a patience of
        (2K - 1) / K lets the search keep that many; such a sentence cannot end sooner).
        A hypothesis cut at `limit` is scored with EOS appended, as ours appends it."""
        sample = d.method == "sample"
        keep = 2 * k - 1 if every else k
        beta = BETA if d.method == "beam" else 0.0
        options = dict(
            beam_size=k,
            patience=keep / k,
            num_hypotheses=keep,
            length_penalty=beta,
            max_decoding_length=limit,
            min_decoding_length=min(d.min_len, limit),
            no_repeat_ngram_size=d.no_repeat_ngram,
            sampling_topk=min(d.top_k, len(self.tgt_tok)) if sample else 1,
            sampling_topp=d.top_p if sample else 1.0,
            sampling_temperature=d.temperature if sample else 1.0,
            return_scores=True,
            return_end_token=True,
            max_input_length=0,  # lines were cut to the model's limit already
        )
        translator = self.translator
        results = translator.translate_batch(pieces, **options)
        # Ours never emits PAD or BOS: it masks them after the softmax. CTranslate2 can only
        # suppress them before it, which moves every score a little; so only where one came.
        odd = [
            i
            for i, r in enumerate(results)
            if any(self.never.intersection(h) for h in r.hypotheses)
        ]
        if odd:
            suppress = [[piece] for piece in sorted(self.never)]
            again = translator.translate_batch(
                [pieces[i] for i in odd], suppress_sequences=suppress, **options
            )
            for i, result in zip(odd, again):
                results[i] = result
        found: list[list[list]] = []  # per sentence: [token ids, log-probability]
        cut: list[tuple[int, int]] = []
        for i, result in enumerate(results):
            found.append([])
            for tokens, score in zip(result.hypotheses, result.scores):
                ids = [self.tgt_ids[t] for t in tokens]
                if ids and ids[-1] == EOS:
                    ids.pop()
                else:
                    cut.append((i, len(found[i])))
                found[i].append([ids, score * len(tokens) ** beta])
        if cut:
            scored = translator.score_batch(
                [pieces[i] for i, _ in cut],
                [self.tgt_tok.id_pieces(found[i][j][0]) for i, j in cut],
                max_input_length=0,
            )
            for (i, j), result in zip(cut, scored):
                found[i][j][1] = sum(result.log_probs)  # EOS included
        alpha = d.length_penalty
        return [
            [Hypothesis(ids, lp, lp / length_penalty(len(ids) + 1, alpha)) for ids, lp in hyps]
            for hyps in found
        ]

    def cross_attention(self, src: list[int], hyps: list[list[int]]) -> list[torch.Tensor]:
        """The last decoder layer's cross-attention over `src` (+EOS), averaged over heads, for
        each hypothesis (+EOS), by forced decoding of the hypothesis."""
        targets = [self.tgt_tok.id_pieces(h) + [self.eos] for h in hyps]
        results = self.translator.translate_batch(
            [self.src_tok.id_pieces(src)] * len(hyps),
            target_prefix=targets,
            beam_size=1,
            max_decoding_length=max(len(t) for t in targets),
            return_attention=True,
            return_end_token=True,
            max_input_length=0,
        )
        weights = []
        for result, target in zip(results, targets):
            rows = torch.tensor(result.attention[0][: len(target)])
            # CTranslate2 leaves out the source EOS it added: its weight is what the rest leave.
            weights.append(torch.cat([rows, (1 - rows.sum(-1, keepdim=True)).clamp(min=0)], -1))
        return weights

    def score(
        self, ids: list[list[int]], refs: list[list[int]], decode: DecodeConfig
    ) -> list[ReferenceScore]:
        """The log-probability of each target (without BOS/EOS; EOS is scored, as CTranslate2's
        score_batch appends it) given its source."""
        results = self.translator.score_batch(
            [self.src_tok.id_pieces(s) for s in ids],
            [self.tgt_tok.id_pieces(r) for r in refs],
            max_batch_size=decode.batch_size or 0,
            max_input_length=0,  # lines were cut to the model's limit already
        )
        scores = []
        for result in results:
            total = float(sum(result.log_probs))
            scores.append(
                ReferenceScore(total, total / len(result.log_probs), len(result.log_probs))
            )
        return scores


def load_export(
    path: str | Path | Sequence[str | Path],
    device: str = "auto",
    precision: str = "auto",
    quantize: str = "none",
    **decode_overrides: Any,
) -> tuple[CTranslate2Engine, Tokenizer, Tokenizer, DecodeConfig, dict[str, Any]]:
    """The engine, tokenizers, decoding settings and description of an exported folder: its
    decoding defaults, which keyword arguments (None: keep) override. `precision` and
    `quantize` (checked by Translator.load) choose CTranslate2's compute type; `auto` keeps the
    type it was exported with."""
    ct2 = require_ctranslate2()
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    if len(paths) != 1:
        raise NmtError("an exported model translates alone; ensembles need checkpoints")
    folder = Path(paths[0])
    if precision not in COMPUTE_TYPES[quantize]:
        raise NmtError(f"unknown precision '{precision}'; use auto, fp32, bf16 or fp16")
    metadata = read_metadata(folder)
    # JSON is YAML: the decode section is read and checked as a recipe's is.
    decode = config.read_decode(folder / EXPORT_FILE)
    decode = config.override_decode(decode, **decode_overrides)
    src_tok = Tokenizer.from_file(folder / metadata["source_tokenizer"])
    tgt_tok = Tokenizer.from_file(folder / metadata["target_tokenizer"])
    compute_type = COMPUTE_TYPES[quantize][precision]
    try:
        translator = ct2.Translator(
            str(folder),
            device=_device(ct2, device),
            compute_type=compute_type,
            intra_threads=torch.get_num_threads(),  # as many threads as our own decoder
        )
    except (RuntimeError, ValueError) as e:
        raise NmtError(f"CTranslate2 cannot load {folder}: {str(e).splitlines()[0]}") from None
    ct2.set_random_seed(decode.sampling_seed)
    log.info(
        f"decoding {folder} with CTranslate2 {ct2.__version__} on {translator.device}, "
        f"{translator.compute_type}"
    )
    engine = CTranslate2Engine(translator, metadata["max_positions"], src_tok, tgt_tok)
    info = {
        "checkpoint": metadata.get("checkpoint"),
        "step": metadata.get("step"),
        "src_lang": metadata.get("source_lang"),
        "tgt_lang": metadata.get("target_lang"),
        "exported": str(folder),
    }
    return engine, src_tok, tgt_tok, decode, info


def _device(ct2: Any, name: str) -> str:
    """Our --device for CTranslate2, which has its own CUDA build (or none)."""
    if name not in ("auto", "cpu", "cuda"):
        raise NmtError(f"unknown device '{name}'; use auto, cpu or cuda")
    has_cuda = ct2.get_cuda_device_count() > 0
    if name == "cuda" and not has_cuda:
        raise NmtError(
            "device 'cuda' was asked for but CTranslate2 sees no CUDA GPU; use cpu or auto"
        )
    return "cuda" if name == "cuda" or (name == "auto" and has_cuda) else "cpu"
