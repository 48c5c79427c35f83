"""A lexical shortlist: the target tokens a batch's search may choose from, as Marian's
shortlist and CTranslate2's vocabulary map do it.

For each source token, the `PER_TOKEN` target tokens most likely to translate it, from IBM
Model 1's word-translation probabilities p(t | s) learned on the run's training data (Brown
et al., 1993: five EM iterations; the source side has an empty word, so target tokens that
translate nothing, such as articles, find a source too); plus the `FREQUENT` most frequent
target tokens and EOS and UNK. A batch decodes over the union of its source tokens' lists:
the projection onto the vocabulary and its log-softmax (about a third of a beam-5 step on the
CPU) shrink to that union, and the log-probabilities are renormalised over it.

The sizes were chosen on the validation set of the Multi30k en→de recipe, beam 5 in batches of
64, where a shortlist pays (docs/experiments/decoding.md, "Issue 38"): 0.1 BLEU for 1.2-1.3x.
One sentence's union is smaller: there it cost 0.4 BLEU. `nmt translate --shortlist` builds the list
once from `RUN/prepared` and keeps it in `RUN/shortlist.pt` (delete it to build it again).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from nmt.data.dataset import Prepared
from nmt.data.tokenizer import EOS, PAD, UNK
from nmt.errors import NmtError
from nmt.utils.files import atomic_write

PER_TOKEN = 50
FREQUENT = 200
ITERATIONS = 5
FILE = "shortlist.pt"


@dataclass(frozen=True)
class Shortlist:
    table: torch.Tensor  # (source vocabulary, PER_TOKEN): target ids, best first
    frequent: torch.Tensor  # target ids every batch may choose

    def allowed(self, src: torch.Tensor, extra: Iterable[int] = ()) -> torch.Tensor:
        """The sorted target ids a batch of source ids (any shape; PAD ignored) may produce,
        with `extra` ids (a prefix's, a constraint's) added."""
        ids = src[src.ne(PAD)].cpu()
        parts = [self.table[ids].flatten(), self.frequent, torch.tensor([EOS, UNK, *extra])]
        return torch.unique(torch.cat(parts))

    def save(self, path: Path) -> None:
        with atomic_write(path, "wb") as f:
            torch.save({"table": self.table, "frequent": self.frequent}, f)

    @classmethod
    def load(cls, path: Path) -> Shortlist:
        state = torch.load(path, weights_only=True)
        return cls(state["table"], state["frequent"])


def translation_probabilities(
    src: Sequence[Sequence[int]],
    tgt: Sequence[Sequence[int]],
    src_vocab: int,
    tgt_vocab: int,
    iterations: int = ITERATIONS,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """IBM Model 1's p(t | s) after `iterations` EM steps from uniform, over the (s, t) pairs
    that occur in a sentence pair together: (source ids, target ids, probabilities). The
    source id PAD stands for the empty word, which every sentence has.

    E step: each target token's alignment posterior over its sentence's source tokens,
    p(t | s_i) / Σ_i' p(t | s_i'); M step: p(t | s) ∝ the posteriors summed over the corpus.
    """
    pieces_s, pieces_t, pieces_j = [], [], []
    position = 0
    for s, t in zip(src, tgt):
        if not len(s) or not len(t):
            continue
        s = torch.tensor([PAD, *s])
        t = torch.as_tensor(t)
        pieces_s.append(s.repeat(len(t)))
        pieces_t.append(t.repeat_interleave(len(s)))
        pieces_j.append(torch.arange(position, position + len(t)).repeat_interleave(len(s)))
        position += len(t)
    if not pieces_s:
        raise NmtError("the training data has no sentence pairs to build a shortlist from")
    s, t, j = torch.cat(pieces_s), torch.cat(pieces_t), torch.cat(pieces_j)
    pairs, pair_of = torch.unique(s * tgt_vocab + t, return_inverse=True)
    pair_s, pair_t = pairs // tgt_vocab, pairs % tgt_vocab
    prob = torch.ones(len(pairs), dtype=torch.float64)
    prob /= torch.zeros(src_vocab, dtype=torch.float64).index_add_(0, pair_s, prob)[pair_s]
    for _ in range(iterations):
        p = prob[pair_of]
        posterior = p / torch.zeros(position, dtype=torch.float64).index_add_(0, j, p)[j]
        counts = torch.zeros(len(pairs), dtype=torch.float64).index_add_(0, pair_of, posterior)
        totals = torch.zeros(src_vocab, dtype=torch.float64).index_add_(0, pair_s, counts)
        prob = counts / totals[pair_s]
    return pair_s, pair_t, prob


def build(
    src: Sequence[Sequence[int]],
    tgt: Sequence[Sequence[int]],
    src_vocab: int,
    tgt_vocab: int,
    per_token: int = PER_TOKEN,
    frequent: int = FREQUENT,
) -> Shortlist:
    pair_s, pair_t, prob = translation_probabilities(src, tgt, src_vocab, tgt_vocab)
    # Sorted by source, then by probability, best first (prob <= 1 < the gap between sources).
    order = torch.argsort(pair_s.double() * 2 - prob)
    pair_s, pair_t = pair_s[order], pair_t[order]
    first = torch.searchsorted(pair_s, torch.arange(src_vocab))
    rank = torch.arange(len(pair_s)) - first[pair_s]
    keep = rank < per_token
    table = torch.full((src_vocab, per_token), EOS, dtype=torch.long)
    table[pair_s[keep], rank[keep]] = pair_t[keep]
    counts = torch.bincount(torch.cat([torch.as_tensor(x) for x in tgt]), minlength=tgt_vocab)
    return Shortlist(table, counts.argsort(descending=True, stable=True)[:frequent])


def for_run(run_dir: Path, prepared_dir: Path) -> Shortlist:
    """The run folder's shortlist, built from its prepared training data the first time."""
    path = run_dir / FILE
    if path.is_file():
        return Shortlist.load(path)
    if not (prepared_dir / "manifest.json").is_file():
        raise NmtError(
            f"--shortlist is built from the run's prepared training data, and {prepared_dir} "
            "has none; run `nmt preprocess` on its recipe first"
        )
    prepared = Prepared.open(prepared_dir)
    train = prepared.dataset("train")
    shortlist = build(
        train.src.sequences(), train.tgt.sequences(), len(prepared.src_tok), len(prepared.tgt_tok)
    )
    shortlist.save(path)
    return shortlist
