"""Greedy search, sampling and beam search over any model with the decoding interface of
nmt.models.base (start, step, reorder, max_output_length).

Every search decodes a batch of sentences at once and drops sentences from the active batch as
soon as they are finished, so no compute is spent on them. The model is fed one new token per
row and step; beam search reorders the model's state whenever it reorders hypotheses.

Options come in one object, the recipe's `decode` section (nmt.config.DecodeConfig).

Between two steps a search calls the hook `between_steps` installed on its thread, if any: the
server decodes short requests there while a long one is half done, and gives up a search whose
requests have all gone (the hook raises).
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from nmt.config import DecodeConfig
from nmt.data.tokenizer import BOS, EOS, PAD
from nmt.errors import NmtError
from nmt.models.base import EncoderDecoder


@dataclass(frozen=True)
class Hypothesis:
    tokens: list[int]  # without BOS and EOS
    score: float  # sum of token log-probabilities, EOS included
    norm_score: float  # score / length_penalty(length with EOS, alpha): what beam search ranks


def length_penalty(length: int, alpha: float) -> float:
    """GNMT's penalty (Wu et al., 2016): ((5 + length) / 6) ** alpha; alpha 0 disables it."""
    return ((5.0 + length) / 6.0) ** alpha


def max_lengths(src: torch.Tensor, a: float, b: int, limit: int) -> list[int]:
    """Per-sentence output limit a * source length + b, capped by the model's limit."""
    src_len = src.ne(PAD).sum(dim=1).tolist()
    return [min(int(a * n + b), limit) for n in src_len]


def _next_log_probs(model: EncoderDecoder, state, tokens: torch.Tensor) -> torch.Tensor:
    """Log-probabilities of the next token after `tokens` (B, 1); never PAD or BOS."""
    lp = model.step(state, tokens)
    lp[:, PAD] = -math.inf
    lp[:, BOS] = -math.inf
    return lp


def _force_eos(lp: torch.Tensor, rows: list[int]) -> None:
    """At a length limit only EOS may follow; it keeps its own log-probability."""
    if rows:
        at = torch.tensor(rows, device=lp.device)
        eos = lp[at, EOS].clone()
        lp[at] = -math.inf
        lp[at, EOS] = eos


def _force_prefix(
    lp: torch.Tensor, raw: torch.Tensor, prefixes: list[list[int]], step: int
) -> None:
    """A row whose prefix goes on at this step can only take its next token, scored as the
    model scores it (`raw`: the log-probabilities before any blocking rule)."""
    for row, prefix in enumerate(prefixes):
        if step < len(prefix):
            lp[row] = -math.inf
            lp[row, prefix[step]] = raw[row, prefix[step]]


# Candidates are found in two stages: the maxima of blocks of BLOCK tokens (one fast, vectorised
# pass over the vocabulary), then the best tokens inside the best blocks. The k best candidates
# lie in the k blocks with the highest maxima, so this is exact. On the CPU a `topk` over 64
# sentences x 5 beams x 8k tokens took 5.9 ms a step, more than the log-softmax's 4.4
# (docs/experiments/decoding.md, "Issue 38").
BLOCK = 32


def _block_maxima(lp: torch.Tensor) -> torch.Tensor:
    """(R, V) -> (R, ceil(V / BLOCK)): the maximum of each block of BLOCK tokens."""
    rows, vocab = lp.shape
    full = vocab // BLOCK
    lp = lp.contiguous()
    maxima = lp.as_strided((rows, full, BLOCK), (vocab, BLOCK, 1)).amax(dim=-1)
    if vocab % BLOCK:
        maxima = torch.cat([maxima, lp[:, full * BLOCK :].amax(dim=-1, keepdim=True)], dim=1)
    return maxima


def _block_tokens(blocks: torch.Tensor, vocab: int) -> torch.Tensor:
    """Block numbers (...) -> their tokens (..., BLOCK); past the vocabulary's end: vocab - 1,
    which `_past_end` marks."""
    tokens = blocks[..., None] * BLOCK + torch.arange(BLOCK, device=blocks.device)
    return tokens.clamp_(max=vocab - 1)


def _past_end(tokens: torch.Tensor) -> torch.Tensor:
    """True where `_block_tokens` repeated the last token for a block past the vocabulary."""
    return tokens.diff(dim=-1, prepend=tokens[..., :1] - 1).eq(0)


# Below this many log-probabilities a step, one `topk` or `max` costs less than the dozen
# small operations of the two stages (one sentence: 90 against 170 us).
DIRECT = 1 << 17


def best_tokens(lp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`lp.max(dim=-1)`: each row's highest value and the first token holding it."""
    if lp.numel() <= DIRECT:
        return lp.max(dim=-1)
    rows, vocab = lp.shape
    block = _block_maxima(lp).argmax(dim=-1)  # the first block holding the maximum
    tokens = _block_tokens(block, vocab)  # (R, BLOCK)
    values = lp.gather(1, tokens)
    values[_past_end(tokens)] = -math.inf
    best, at = values.max(dim=-1)
    return best, tokens.gather(1, at[:, None]).squeeze(1)


def top_candidates(
    scores: torch.Tensor, lp: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The k best of scores[i, b] + lp[i·K + b, t] over each sentence i's beams b and tokens t:
    `(scores[:, :, None] + lp.view(n, K, V)).view(n, K·V).topk(k)`, values and flat indices
    b·V + t, with the same sums."""
    n, K = scores.shape
    vocab = lp.shape[1]
    if lp.numel() <= DIRECT:
        full = (scores[:, :, None] + lp.view(n, K, vocab)).view(n, K * vocab)
        return full.topk(min(k, K * vocab), dim=1)
    blocks_per_row = -(-vocab // BLOCK)
    maxima = (_block_maxima(lp).view(n, K, blocks_per_row) + scores[:, :, None]).view(n, -1)
    k_blocks = min(k, maxima.shape[1])
    best_blocks = maxima.topk(k_blocks, dim=1).indices  # (n, k_blocks) over beams x blocks
    beam = best_blocks // blocks_per_row
    tokens = _block_tokens(best_blocks % blocks_per_row, vocab)  # (n, k_blocks, BLOCK)
    rows = (beam + torch.arange(n, device=lp.device)[:, None] * K)[:, :, None]
    values = scores.gather(1, beam)[:, :, None] + lp[rows, tokens]
    values = values.masked_fill_(_past_end(tokens), -math.inf).view(n, -1)
    top_values, at = values.topk(min(k, K * vocab), dim=1)
    flat = (beam[:, :, None] * vocab + tokens).view(n, -1).gather(1, at)
    return top_values, flat


def _apply_length_and_repeat_rules(
    lp: torch.Tensor, tokens: torch.Tensor, step: int, options: DecodeConfig
) -> None:
    """No EOS before `min_len` tokens; no token that would repeat an n-gram of the row's own
    output (`no_repeat_ngram` = n). `tokens` are the rows' outputs so far, BOS first."""
    if step < options.min_len:
        lp[:, EOS] = -math.inf
    n = options.no_repeat_ngram
    if n > 0 and step + 1 >= n:
        history = tokens[:, 1:].tolist()
        for row, seq in enumerate(history):
            prefix = tuple(seq[len(seq) - n + 1 :]) if n > 1 else ()
            banned = [
                seq[i + n - 1]
                for i in range(len(seq) - n + 1)
                if tuple(seq[i : i + n - 1]) == prefix
            ]
            if banned:
                lp[row, banned] = -math.inf


@dataclass(frozen=True)
class Sampler:
    """Draws the next token from the model's distribution, sharpened or flattened by
    `temperature`, restricted to the `top_k` most likely tokens and to the smallest set whose
    probability reaches `top_p` (0 and 1 disable them)."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    generator: torch.Generator | None = None

    def __call__(self, lp: torch.Tensor) -> torch.Tensor:
        logits = lp / self.temperature
        if self.top_k > 0:
            kth = logits.topk(min(self.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, -math.inf)
        if self.top_p < 1.0:
            sorted_logits, order = logits.sort(dim=-1, descending=True)
            cumulative = sorted_logits.softmax(-1).cumsum(-1)
            # Drop a token when the tokens before it already reach top_p (the first stays).
            drop = (cumulative - sorted_logits.softmax(-1)) >= self.top_p
            logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, -math.inf))
        probs = logits.softmax(-1)
        return torch.multinomial(probs, 1, generator=self.generator).squeeze(1)


_thread = threading.local()


@contextlib.contextmanager
def between_steps(hook: Callable[[], None] | None) -> Iterator[None]:
    """Call `hook` between the steps of every search on this thread inside the block (None: no
    hook, e.g. for a search the hook itself starts)."""
    previous = getattr(_thread, "hook", None)
    _thread.hook = hook
    try:
        yield
    finally:
        _thread.hook = previous


def pause() -> None:
    hook = getattr(_thread, "hook", None)
    if hook is not None:
        hook()


def search(
    model: EncoderDecoder,
    src: torch.Tensor,
    options: DecodeConfig,
    *,
    nbest: int = 1,
    generator: torch.Generator | None = None,
    guide: Guide | None = None,
    vocab: torch.Tensor | None = None,
) -> list[list[Hypothesis]]:
    """The search `options.method` names; each sentence's hypotheses, best first (one for
    greedy search and sampling; `generator` seeds sampling). A `guide` with constraints needs
    beam search; its prefixes work with every search. `vocab`: a shortlist, the only target
    ids the search may choose (nmt.decoding.shortlist)."""
    if options.method == "beam":
        return beam_search(model, src, options, nbest=nbest, guide=guide, vocab=vocab)
    if guide is not None and any(guide.constraints):
        raise NmtError("constraints need beam search (decode.method: beam)")
    prefixes = guide.prefixes if guide is not None else None
    hyps = greedy_search(model, src, options, generator=generator, prefixes=prefixes, vocab=vocab)
    return [[h] for h in hyps]


@torch.inference_mode()
def greedy_search(
    model: EncoderDecoder,
    src: torch.Tensor,
    options: DecodeConfig,
    *,
    generator: torch.Generator | None = None,
    prefixes: list[list[int]] | None = None,
    vocab: torch.Tensor | None = None,
) -> list[Hypothesis]:
    """The most likely token at each step or, with `options.method == "sample"`, a sampled
    one; each sentence's `prefixes` entry (target tokens) is forced first. Scores are the
    model's own log-probabilities of the chosen tokens."""
    sampler = None
    if options.method == "sample":
        sampler = Sampler(options.temperature, options.top_k, options.top_p, generator)
    device = src.device
    limits = max_lengths(src, options.max_len_a, options.max_len_b, model.max_output_length)
    prefixes = prefixes or [[] for _ in limits]
    limits = [max(n, min(len(p), model.max_output_length)) for n, p in zip(limits, prefixes)]
    state = model.start(src, vocab)
    active = list(range(src.shape[0]))  # sentence of each row
    tokens = torch.full((len(active), 1), BOS, dtype=torch.long, device=device)
    scores = torch.zeros(len(active), device=device)
    results: list[Hypothesis | None] = [None] * len(active)
    for step in range(max(limits) + 1):
        pause()
        lp = _next_log_probs(model, state, tokens[:, -1:])
        forcing = any(step < len(prefixes[s]) for s in active)
        raw = lp.clone() if forcing else lp
        _apply_length_and_repeat_rules(lp, tokens, step, options)
        _force_eos(lp, [row for row, s in enumerate(active) if step >= limits[s]])
        if forcing:
            _force_prefix(lp, raw, [prefixes[s] for s in active], step)
        if sampler is None:
            best_lp, best = best_tokens(lp)
        else:
            best = sampler(lp)
            best_lp = lp.gather(1, best[:, None]).squeeze(1)
        scores = scores + best_lp
        tokens = torch.cat([tokens, best[:, None]], dim=1)
        done = best.eq(EOS).tolist()
        if not any(done):
            continue
        keep = []
        for row, sentence in enumerate(active):
            if done[row]:
                score = scores[row].item()
                penalty = length_penalty(step + 1, options.length_penalty)
                results[sentence] = Hypothesis(tokens[row, 1:-1].tolist(), score, score / penalty)
            else:
                keep.append(row)
        if not keep:
            break
        order = torch.tensor(keep, device=device)
        active = [active[r] for r in keep]
        tokens, scores = tokens[order], scores[order]
        model.reorder(state, order, order)
    return [r if r is not None else Hypothesis([], -math.inf, -math.inf) for r in results]


@dataclass(frozen=True)
class Progress:
    """How far one hypothesis is through its sentence's constraints (target phrases that must
    appear): which are met and, for each other phrase, how many of its first tokens the
    output ends with. Every phrase is followed on its own, so phrases that begin alike (two
    words after a lone "▁" piece) are both tracked, and a token that breaks a partial match
    falls back to the longest shorter one, as a string matcher does (Knuth-Morris-Pratt)."""

    met: tuple[bool, ...]
    matched: tuple[int, ...] = ()  # per phrase; () is none yet

    def advance(self, token: int, phrases: Sequence[Sequence[int]]) -> Progress:
        matched = self.matched or (0,) * len(phrases)
        met, now = list(self.met), []
        for j, phrase in enumerate(phrases):
            if met[j]:
                now.append(0)
                continue
            n = _match_after(phrase, matched[j], token)
            if n == len(phrase):
                met[j], n = True, 0
            now.append(n)
        return Progress(tuple(met), tuple(now))

    def done(self) -> bool:
        return all(self.met)

    def count(self, phrases: Sequence[Sequence[int]]) -> int:
        """Constraint tokens generated: the phrases met, and the longest partial match."""
        done = sum(len(p) for p, m in zip(phrases, self.met) if m)
        return done + max(self.matched, default=0)

    def wanted(self, phrases: Sequence[Sequence[int]]) -> list[int]:
        """The tokens that would make progress: the next token of every unmet phrase."""
        matched = self.matched or (0,) * len(phrases)
        return list(dict.fromkeys(p[n] for p, m, n in zip(phrases, self.met, matched) if not m))

    def remaining(self, phrases: Sequence[Sequence[int]]) -> int:
        return sum(len(p) for p in phrases) - self.count(phrases)


def _match_after(phrase: Sequence[int], matched: int, token: int) -> int:
    """The number of the phrase's first tokens that the output ends with, once `token` follows
    an output ending with its first `matched` tokens."""
    if phrase[matched] == token:
        return matched + 1
    tail = list(phrase[:matched]) + [token]
    for n in range(min(matched, len(phrase) - 1), 0, -1):
        if tail[-n:] == list(phrase[:n]):
            return n
    return 0


@dataclass
class Guide:
    """What beam search must produce besides likely text, per sentence: a target `prefix` to
    continue from (forced, and scored like any token) and `constraints`, target phrases that
    must all appear in every finished hypothesis."""

    prefixes: list[list[int]]
    constraints: list[list[list[int]]]

    def extra_steps(self, sentence: int) -> int:
        """Steps a sentence may take beyond its length limit: enough to complete its prefix and
        its constraints."""
        return len(self.prefixes[sentence]) + sum(map(len, self.constraints[sentence]))


def _restrict(
    lp: torch.Tensor,
    raw: torch.Tensor,
    step: int,
    rows: list[tuple[int, Progress | None]],
    guide: Guide,
    limits: list[int],
) -> None:
    """For each row (its sentence, its constraint progress): a prefix token still to come is the
    only choice; EOS waits until every constraint is met; at the length limit a row with unmet
    constraints may only make progress, and one without may only end. Forced tokens keep the
    model's own log-probability (`raw`, before blocking rules such as no-repeat)."""
    for row, (sentence, progress) in enumerate(rows):
        prefix = guide.prefixes[sentence]
        phrases = guide.constraints[sentence]
        allowed: list[int] | None = None
        if step < len(prefix):
            allowed = [prefix[step]]
        elif progress is not None and not progress.done():
            lp[row, EOS] = -math.inf
            if step >= limits[sentence]:
                allowed = progress.wanted(phrases)
        elif step >= limits[sentence]:
            allowed = [EOS]
        if allowed is not None:
            lp[row] = -math.inf
            lp[row, allowed] = raw[row, allowed]


def _select_guided(
    K: int,
    width: int,
    beams: list[int],
    toks: list[int],
    scs: list[float],
    lp: torch.Tensor,
    row_scores: list[float],
    progress: list[Progress | None],
    phrases: list[list[int]],
) -> tuple[list[tuple[int, float]], list[tuple[int, int, float, Progress | None]]]:
    """One sentence's step under constraints, with dynamic beam allocation (Post & Vilar,
    2018): the top candidates, plus each live hypothesis' best token and the tokens that would
    advance its constraints; hypotheses are grouped into banks by the number of constraint
    tokens they have generated, and `width` (the beam size) slots are dealt to the banks in
    turn, most advanced first, each taking its best candidates. A sentence with constraints
    has one row more (K = width + 1): it keeps the best candidate of all when its bank got no
    slot (with as many constraint tokens as slots, the dealing never reaches the bank of the
    unconstrained best, which was dropped at the first step), else one more dealt. EOS among
    the `width` best candidates finishes a hypothesis. Returns the finishing candidates (beam,
    score) and the survivors (beam, token, score, progress)."""
    pool = {(b, t): sc for b, t, sc in zip(beams, toks, scs) if sc != -math.inf}
    for beam, score in enumerate(row_scores):
        if score == -math.inf or progress[beam] is None:
            continue
        row = lp[beam]
        extra = progress[beam].wanted(phrases) + [int(row.argmax())]
        for tok in extra:
            value = score + float(row[tok])
            if value != -math.inf:
                pool.setdefault((beam, tok), value)
    ranked = sorted(pool.items(), key=lambda item: -item[1])
    finishing = [(b, sc) for rank, ((b, t), sc) in enumerate(ranked) if t == EOS and rank < width]
    banks: dict[int, list] = {}
    chosen: list = []
    for (beam, tok), sc in ranked:
        if tok == EOS:
            continue
        advanced = progress[beam].advance(tok, phrases)
        banks.setdefault(advanced.count(phrases), []).append((beam, tok, sc, advanced))
    order = sorted(banks, reverse=True)
    best = max((banks[b][0] for b in order if banks[b]), key=lambda c: c[2], default=None)

    def deal(slots: int) -> None:
        while len(chosen) < slots and any(banks[c] for c in order):
            for c in order:
                if banks[c] and len(chosen) < slots:
                    chosen.append(banks[c].pop(0))

    deal(width)
    if phrases:  # the extra row: the best hypothesis if its bank got no slot, else one more
        if best is not None and best not in chosen:
            chosen.append(best)
            banks[best[3].count(phrases)].remove(best)
        deal(K)
    chosen.sort(key=lambda candidate: -candidate[2])
    return finishing, chosen


@torch.inference_mode()
def beam_search(
    model: EncoderDecoder,
    src: torch.Tensor,
    options: DecodeConfig,
    *,
    nbest: int = 1,
    guide: Guide | None = None,
    vocab: torch.Tensor | None = None,
) -> list[list[Hypothesis]]:
    """Returns, for each sentence, its `nbest` best finished hypotheses, best first.

    Each step takes the 2K best continuations of the K live hypotheses; an EOS among the top K
    finishes a hypothesis, and the K best others live on. A sentence is done when it has K
    finished hypotheses (fairseq's early stop); at its length limit only EOS is allowed.
    K is the beam size, raised to `nbest` if that is larger. With a `guide`, each sentence
    continues its prefix and every finished hypothesis holds all its constraints (see
    `_select_guided`); the limit then stretches by as many tokens as they need.
    """
    width = max(options.beam_size, nbest)  # hypotheses ranked by score; finished ones wanted
    K = width  # rows per sentence
    if guide is not None and any(guide.constraints):
        K += 1  # a row for the best hypothesis when its constraint bank gets no slot
    alpha = options.length_penalty
    device = src.device
    n_sent = src.shape[0]
    limits = max_lengths(src, options.max_len_a, options.max_len_b, model.max_output_length)
    last_step = max(limits)
    if guide is not None:
        last_step = max(
            min(n + guide.extra_steps(i), model.max_output_length) for i, n in enumerate(limits)
        )
    state = model.start(src, vocab)
    expand = torch.arange(n_sent, device=device).repeat_interleave(K)
    model.reorder(state, expand, expand)  # K rows per sentence
    active = list(range(n_sent))
    tokens = torch.full((n_sent * K, 1), BOS, dtype=torch.long, device=device)
    # Only the first beam is live at the start; the others would duplicate it.
    scores = torch.full((n_sent, K), -math.inf, device=device)
    scores[:, 0] = 0.0
    progress: list[Progress | None] = [None] * (n_sent * K)
    if guide is not None:
        progress = [
            Progress((False,) * len(guide.constraints[i])) for i in range(n_sent) for _ in range(K)
        ]
    finished: list[list[Hypothesis]] = [[] for _ in range(n_sent)]
    # With a shortlist every other token's log-probability is -inf, so a few sentences'
    # candidates are chosen among the list's columns only: one sentence's top-k runs over
    # 5 × ~450 sums instead of 5 × 8,000 (beam 5, one sentence at a time: 0.96× the time).
    # Large batches take the two-stage pass over full rows, which gathering the columns
    # first would not make cheaper. (A guide's rules look at whole rows: it keeps them.)
    columns = vocab.to(device) if vocab is not None and guide is None else None
    for step in range(last_step + 1):
        pause()
        lp = _next_log_probs(model, state, tokens[:, -1:])
        raw = lp.clone() if guide is not None else lp
        _apply_length_and_repeat_rules(lp, tokens, step, options)
        if guide is None:
            _force_eos(
                lp,
                [i * K + k for i, s in enumerate(active) if step >= limits[s] for k in range(K)],
            )
        else:
            rows = [(s, progress[i * K + k]) for i, s in enumerate(active) for k in range(K)]
            _restrict(lp, raw, step, rows, guide, limits)
        listed = columns is not None and lp.numel() <= DIRECT
        candidates = lp.index_select(1, columns) if listed else lp
        n_cols = candidates.shape[1]
        top_scores, top_idx = top_candidates(scores, candidates, 2 * K)
        top_tok_ids = columns[top_idx % n_cols] if listed else top_idx % n_cols
        top_beam, top_tok = (top_idx // n_cols).tolist(), top_tok_ids.tolist()
        top_scores_list = top_scores.tolist()
        rows, next_tokens, next_scores, kept = [], [], [], []  # kept: indices into active
        next_progress: list[Progress | None] = []
        for i, sentence in enumerate(active):
            done = finished[sentence]
            if guide is None:
                finishing, live = _select(K, top_beam[i], top_tok[i], top_scores_list[i])
            else:
                finishing, live = _select_guided(
                    K,
                    width,
                    top_beam[i],
                    top_tok[i],
                    top_scores_list[i],
                    lp[i * K : (i + 1) * K],
                    scores[i].tolist(),
                    progress[i * K : (i + 1) * K],
                    guide.constraints[sentence],
                )
            for beam, sc in finishing:
                if len(done) < width:
                    history = tokens[i * K + beam, 1:].tolist()
                    norm = sc / length_penalty(len(history) + 1, alpha)
                    done.append(Hypothesis(history, sc, norm))
            if len(done) >= width or not live:
                continue
            while len(live) < K:  # keep K rows per sentence; dead rows score -inf
                live.append((*live[0][:2], -math.inf, *live[0][3:]))
            kept.append(i)
            for beam, tok, sc, *advanced in live:
                rows.append(i * K + beam)
                next_tokens.append(tok)
                next_scores.append(sc)
                next_progress.append(advanced[0] if advanced else None)
        if not kept:
            break
        order = torch.tensor(rows, device=device)
        # Source-side rows are the same for the K rows of a sentence: they only move when
        # sentences leave, and then by whole blocks.
        source_order = None
        if len(kept) < len(active):
            source_order = torch.tensor([i * K + k for i in kept for k in range(K)], device=device)
        active = [active[i] for i in kept]
        tokens = torch.cat(
            [tokens[order], torch.tensor(next_tokens, device=device)[:, None]], dim=1
        )
        scores = torch.tensor(next_scores, device=device).view(len(active), K)
        progress = next_progress
        model.reorder(state, order, source_order)
    results = []
    for hyps in finished:
        hyps = sorted(hyps, key=lambda h: h.norm_score, reverse=True)
        results.append(hyps[:nbest] if hyps else [Hypothesis([], -math.inf, -math.inf)])
    return results


def _select(
    K: int, beams: list[int], toks: list[int], scs: list[float]
) -> tuple[list[tuple[int, float]], list[tuple[int, int, float]]]:
    """One sentence's step: EOS among the top K candidates finishes a hypothesis; the K best
    others live on. Returns the finishing (beam, score) and the survivors (beam, token, score)."""
    finishing, live = [], []
    for rank, (beam, tok, sc) in enumerate(zip(beams, toks, scs)):
        if sc == -math.inf:
            break
        if tok == EOS:
            if rank < K:
                finishing.append((beam, sc))
        elif len(live) < K:
            live.append((beam, tok, sc))
    return finishing, live
