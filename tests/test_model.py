"""The Transformer model and the searches, for every attention mechanism.

Tiny models are built through nmt.config.ModelConfig + nmt.models.builder.build_model for each attention
kind (and a per-site mix), in pre- and post-norm. Checked: shapes, invariance to source padding,
causality of the decoder, incremental (cached) decoding against the full forward pass, and the
searches: reported scores equal teacher-forced re-scoring, beam 1 equals greedy, beam's best
raw score is at least greedy's, and a sentence decodes the same alone and in a batch.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from nmt.config import AttentionSites, DecodeConfig, ModelConfig
from nmt.data.tokenizer import BOS, EOS, PAD
from nmt.decoding.search import Hypothesis, beam_search, greedy_search, length_penalty
from nmt.models.base import Dropout
from nmt.models.builder import build_model
from nmt.models.transformer import Transformer

VOCAB = 13  # 0-3 are PAD, UNK, BOS, EOS
ATOL = 1e-5

KINDS = {
    "multihead": {"attention": "multihead"},
    "luong_dot": {"attention": "luong", "luong_score": "dot"},
    "luong_general": {"attention": "luong", "luong_score": "general"},
    "bahdanau": {"attention": "bahdanau"},
    "mixed": {
        "attention": AttentionSites(encoder="multihead", decoder="luong", cross="bahdanau"),
        "luong_score": "general",
    },
}
NORMS = ["pre", "post"]


def make_model(
    kind: str, norm: str = "pre", seed: int = 0, decoder_layers: int = 1, eos_scale: float = 1.0
) -> Transformer:
    """A tiny model, all parameters perturbed (biases, layer norms and W_a leave their initial
    values), put in eval mode. Dropout is set non-zero everywhere so that eval() has to disable
    it for the comparisons below to hold."""
    torch.manual_seed(seed)
    cfg = ModelConfig(
        d_model=16,
        heads=2,
        ff_dim=32,
        encoder_layers=1,
        decoder_layers=decoder_layers,
        dropout=0.2,
        attention_dropout=0.2,
        activation_dropout=0.2,
        norm=norm,
        max_positions=32,
        **KINDS[kind],
    )
    cfg.validate()
    model = build_model(cfg, VOCAB, VOCAB, share_all=True)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
        model.tgt_embed.weight[EOS] *= eos_scale  # tied: scales the EOS logit
    return model.eval()


def random_batch(lengths: list[int], width: int | None = None) -> torch.Tensor:
    """Token ids >= 4 (no special tokens), PAD after each sentence's length."""
    width = width or max(lengths)
    tokens = torch.randint(4, VOCAB, (len(lengths), width))
    for row, n in enumerate(lengths):
        tokens[row, n:] = PAD
    return tokens


def target_in(batch: int, length: int) -> torch.Tensor:
    tgt = torch.randint(3, VOCAB, (batch, length))  # EOS may appear mid-prefix: irrelevant here
    tgt[:, 0] = BOS
    return tgt


def log_probs(model: Transformer, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return F.log_softmax(model(src, tgt_in), dim=-1)


def test_attention_kinds_are_built_per_site():
    model = make_model("mixed")
    enc, dec = model.encoder_layers[0], model.decoder_layers[0]
    assert type(enc.self_attn).__name__ == "MultiHeadAttention"
    assert type(dec.self_attn).__name__ == "LuongAttention" and dec.self_attn.score == "general"
    assert type(dec.cross_attn).__name__ == "BahdanauAttention"
    assert dec.cross_attn.cross and not dec.self_attn.cross
    assert not enc.self_attn.cross


# ----------------------------------------------------------------------------------------------
# 6. Shapes, source padding invariance, causality of the decoder.


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("kind", KINDS)
def test_forward_and_decode_shapes(kind, norm):
    model = make_model(kind, norm, seed=1)
    torch.manual_seed(1)
    src, tgt = random_batch([5, 3, 4]), target_in(3, 6)
    with torch.no_grad():
        memory, pad_mask = model.encode(src)
        logits, weights = model.decode(tgt, memory, pad_mask, need_weights=True)
    assert logits.shape == (3, 6, VOCAB) and logits.dtype == torch.float32
    assert memory.shape == (3, 5, 16)
    assert torch.equal(pad_mask, src.eq(PAD))
    assert weights.shape == (3, 2, 6, 5)  # the last layer's cross-attention weights
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 2, 6))
    assert torch.all(weights[pad_mask[:, None, None, :].expand_as(weights)] == 0)
    assert torch.isfinite(logits).all()


def test_forward_shapes_with_separate_vocabularies():
    torch.manual_seed(2)
    cfg = ModelConfig(d_model=16, heads=2, ff_dim=32, encoder_layers=1, decoder_layers=1)
    model = build_model(cfg, src_vocab=9, tgt_vocab=VOCAB, share_all=False).eval()
    assert model.src_embed is not model.tgt_embed
    with torch.no_grad():
        out = model(torch.randint(4, 9, (2, 4)), target_in(2, 3))
    assert out.shape == (2, 3, VOCAB)


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("kind", KINDS)
def test_extra_source_padding_does_not_change_log_probs(kind, norm):
    model = make_model(kind, norm, seed=3)
    torch.manual_seed(3)
    src, tgt = random_batch([5, 2, 4]), target_in(3, 5)
    base = log_probs(model, src, tgt)
    padded = torch.cat([src, torch.full((3, 3), PAD)], dim=1)
    torch.testing.assert_close(log_probs(model, padded, tgt), base, atol=ATOL, rtol=1e-5)


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("kind", KINDS)
def test_future_target_tokens_do_not_change_earlier_outputs(kind, norm):
    model = make_model(kind, norm, seed=4)
    torch.manual_seed(4)
    src, tgt = random_batch([4, 3]), target_in(2, 7)
    t = 3
    changed = tgt.clone()
    changed[:, t:] = (tgt[:, t:] - 3 + 1) % (VOCAB - 3) + 3  # a different token everywhere
    padded = tgt.clone()
    padded[:, t:] = PAD  # the target padded after position t
    # One forward pass over the three variants (rows are independent; see the search tests
    # for a sentence alone against the same sentence in a batch).
    lp = log_probs(model, src.repeat(3, 1), torch.cat([tgt, changed, padded]))
    base, out, out_padded = lp[:2], lp[2:4], lp[4:]
    torch.testing.assert_close(out[:, :t], base[:, :t], atol=ATOL, rtol=1e-5)
    assert not torch.allclose(out[:, t:], base[:, t:], atol=1e-3)
    torch.testing.assert_close(out_padded[:, :t], base[:, :t], atol=ATOL, rtol=1e-5)


# ----------------------------------------------------------------------------------------------
# 7. Incremental decoding with the cache.


def _decode_step_by_step(model, src, tgt, reorder_at=None, order=None):
    """Log-probabilities of each next token, fed one position at a time through the search
    interface (start, step, reorder), as a search feeds them."""
    with torch.no_grad():
        state = model.start(src)
        steps = []
        for t in range(tgt.shape[1]):
            if t == reorder_at:
                model.reorder(state, order, order)
                tgt = tgt[order]
                steps = [s[order] for s in steps]
            steps.append(model.step(state, tgt[:, t : t + 1])[:, None])
    return torch.cat(steps, dim=1), state


@pytest.mark.parametrize("kind, norm", [(kind, "pre") for kind in KINDS] + [("mixed", "post")])
def test_incremental_decoding_matches_full_forward(kind, norm):
    model = make_model(kind, norm, seed=5, decoder_layers=2)
    torch.manual_seed(5)
    src, tgt = random_batch([5, 2, 4]), target_in(3, 5)
    full = log_probs(model, src, tgt)
    inc, state = _decode_step_by_step(model, src, tgt)
    torch.testing.assert_close(inc, full, atol=ATOL, rtol=1e-5)
    # Keys and values of each layer, (rows, heads, positions, d_head): the source's, computed
    # once, and one per target position, written into buffers that grow by whole blocks.
    assert [kv.shape for kv in state.cross_kv] == [(3, 2, 5, 8)] * 4
    assert state.length == 5 and [kv.shape[:2] for kv in state.self_kv] == [(3, 2)] * 4


def test_one_pass_log_probs_equal_the_search_s_steps():
    """`log_probs`, the one teacher-forced pass that scores references, gives what the search's
    steps give, for a model and for an ensemble (the renormalised mean of its members)."""
    from nmt.models.ensemble import Ensemble

    torch.manual_seed(7)
    src, tgt = random_batch([5, 2, 4]), target_in(3, 5)
    one, two = make_model("multihead", "pre", seed=7), make_model("mixed", "pre", seed=8)
    for model in (one, Ensemble([one, two]).eval()):
        with torch.no_grad():
            state, steps = model.start(src), []
            for t in range(tgt.shape[1]):
                steps.append(model.step(state, tgt[:, t : t + 1])[:, None])
            torch.testing.assert_close(
                model.log_probs(src, tgt), torch.cat(steps, dim=1), atol=ATOL, rtol=1e-5
            )


@pytest.mark.parametrize("kind", ["multihead", "mixed"])
def test_incremental_decoding_with_reordered_cache_matches_full_forward(kind):
    """Transformer.reorder in the middle of decoding, as beam search does (with a duplicate row).
    The mixed model has Luong self-attention and Bahdanau cross-attention caches."""
    model = make_model(kind, "pre", seed=6, decoder_layers=2)
    torch.manual_seed(6)
    src, tgt = random_batch([5, 2, 4]), target_in(3, 5)
    order = torch.tensor([2, 2, 0])
    inc, _ = _decode_step_by_step(model, src, tgt, reorder_at=3, order=order)
    full = log_probs(model, src[order], tgt[order])
    torch.testing.assert_close(inc, full, atol=ATOL, rtol=1e-5)


@pytest.mark.parametrize("kind", list(KINDS))
def test_beam_search_s_cache_moves_equal_the_full_forward(kind):
    """As beam search uses the cache with two sentences of two hypotheses: rows expanded (the
    source kept once per sentence, its two queries reading it together), the buffers grown past
    their first block of positions, a reorder that moves some rows and keeps others, then one
    that drops a sentence: every step still equals the full forward pass of the surviving
    prefixes."""
    from nmt.models import incremental

    model = make_model(kind, "post", seed=9, decoder_layers=2)
    torch.manual_seed(9)
    length = incremental.BLOCK + 9  # the tiny model allows 32 positions
    sentences = random_batch([5, 3])
    expand = torch.tensor([0, 0, 1, 1])
    src, tgt = sentences[expand], target_in(4, length)
    within = torch.tensor([0, 0, 2, 2])  # rows 0 and 2 stay; 1 and 3 copy their neighbours
    leave = torch.tensor([2, 3])  # the first sentence is done
    with torch.no_grad():
        state, steps = model.start(sentences), []
        model.reorder(state, expand, expand)
        assert state.group == 2 and state.cross_kv[0].shape[0] == 2
        for t in range(length):
            if t == incremental.BLOCK + 1:
                model.reorder(state, within)
                tgt, steps = tgt[within], [s[within] for s in steps]
            if t == incremental.BLOCK + 5:
                model.reorder(state, leave, leave)
                src, tgt, steps = src[leave], tgt[leave], [s[leave] for s in steps]
            steps.append(model.step(state, tgt[:, t : t + 1])[:, None])
    assert state.group == 2 and state.cross_kv[0].shape[0] == 1
    assert all(kv.shape[0] == 2 and kv.shape[2] >= length for kv in state.self_kv)
    full = log_probs(model, src, tgt)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=ATOL, rtol=1e-5)


@pytest.mark.parametrize("kind", list(KINDS))
def test_cached_decode_of_several_new_positions_matches_full_forward(kind):
    """A cache plus several new positions at once (as in prefix-forced decoding)."""
    from nmt.models import incremental

    model = make_model(kind, "pre", seed=7)
    torch.manual_seed(7)
    src, tgt = random_batch([4, 3]), target_in(2, 5)
    full = log_probs(model, src, tgt)
    with torch.no_grad():
        state = model.start(src)
        first = incremental.step(model, state, tgt[:, :3])  # 3 positions
        rest = incremental.step(model, state, tgt[:, 3:])  # 2 positions
    inc = F.log_softmax(model.project(torch.cat([first, rest], dim=1)), dim=-1)
    torch.testing.assert_close(inc, full, atol=ATOL, rtol=1e-5)


# ----------------------------------------------------------------------------------------------
# 8. Search consistency.

SEARCH_LENGTHS = [3, 1, 2]  # source lengths of the batch; output limit = 1.0 * length + 1
MAX_A, MAX_B = 1.0, 1
GREEDY = DecodeConfig(method="greedy", max_len_a=MAX_A, max_len_b=MAX_B)


def beam_options(beam_size: int, alpha: float) -> DecodeConfig:
    return DecodeConfig(beam_size=beam_size, length_penalty=alpha, max_len_a=MAX_A, max_len_b=MAX_B)


class SearchRun:
    """All searches of one mechanism, run once and shared by the tests below."""

    def __init__(self, kind: str):
        norm = "post" if kind == "mixed" else "pre"
        self.model = make_model(kind, norm, seed=11, eos_scale=0.8)
        torch.manual_seed(11)
        self.src = random_batch(SEARCH_LENGTHS)
        self.greedy = greedy_search(self.model, self.src, GREEDY)
        self.beam = beam_search(self.model, self.src, beam_options(3, 0.0), nbest=3)
        self.beam1 = beam_search(self.model, self.src, beam_options(1, 1.0))


@pytest.fixture(scope="module")
def search_run(request) -> SearchRun:
    return SearchRun(request.param)


def rescore(model: Transformer, src: torch.Tensor, rows: list[int], hyps: list[Hypothesis]):
    """Teacher-forced sum of log-probabilities of each hypothesis' tokens followed by EOS, from
    one full forward pass (hypothesis i is scored against source row rows[i]). Also returns the
    log-probabilities (N, T, V) of that pass."""
    length = max(len(h.tokens) for h in hyps) + 1
    tgt_in = torch.full((len(hyps), length), PAD)
    tgt_out = torch.full((len(hyps), length), PAD)
    for i, h in enumerate(hyps):
        tgt_in[i, : len(h.tokens) + 1] = torch.tensor([BOS, *h.tokens])
        tgt_out[i, : len(h.tokens) + 1] = torch.tensor([*h.tokens, EOS])
    lp = log_probs(model, src[rows], tgt_in)
    token_lp = lp.double().gather(-1, tgt_out[..., None])[..., 0].masked_fill(tgt_out.eq(PAD), 0.0)
    return token_lp.sum(-1).tolist(), lp


def _check_hypothesis_tokens(h: Hypothesis, limit: int):
    assert all(tok not in (PAD, BOS, EOS) for tok in h.tokens)
    assert len(h.tokens) <= limit
    assert math.isfinite(h.score) and h.score <= 0


@pytest.mark.parametrize("search_run", list(KINDS), indirect=True)
def test_greedy_scores_equal_teacher_forced_rescoring(search_run):
    run = search_run
    limits = [int(MAX_A * n + MAX_B) for n in SEARCH_LENGTHS]
    for h, limit in zip(run.greedy, limits):
        _check_hypothesis_tokens(h, limit)
    expected, lp = rescore(run.model, run.src, list(range(len(run.greedy))), run.greedy)
    for h, score in zip(run.greedy, expected):
        assert h.score == pytest.approx(score, abs=1e-4)
        # The same length-penalised score as beam search ranks by (GREEDY's alpha is 1).
        assert h.norm_score == pytest.approx(
            h.score / length_penalty(len(h.tokens) + 1, 1.0), rel=1e-9
        )
    # Greedy picks the most likely token at every step (re-checked by teacher forcing).
    lp[:, :, [PAD, BOS]] = -math.inf
    for row, h in enumerate(run.greedy):
        best = lp[row, : len(h.tokens) + 1].argmax(-1).tolist()
        if len(h.tokens) < limits[row]:
            assert best == [*h.tokens, EOS]
        else:  # at the length limit EOS is forced
            assert best[:-1] == h.tokens


@pytest.mark.parametrize("search_run", list(KINDS), indirect=True)
def test_beam_scores_equal_teacher_forced_rescoring(search_run):
    run = search_run
    limits = [int(MAX_A * n + MAX_B) for n in SEARCH_LENGTHS]
    for results, alpha in ((run.beam, 0.0), (run.beam1, 1.0)):
        rows, hyps = [], []
        for row, nbest in enumerate(results):
            assert 1 <= len(nbest)
            norms = [h.norm_score for h in nbest]
            assert norms == sorted(norms, reverse=True)  # best first
            assert len({tuple(h.tokens) for h in nbest}) == len(nbest)  # distinct hypotheses
            for h in nbest:
                _check_hypothesis_tokens(h, limits[row])
                # The length penalty counts the EOS: GNMT's ((5 + |y|) / 6) ** alpha.
                assert h.norm_score == pytest.approx(
                    h.score / length_penalty(len(h.tokens) + 1, alpha), rel=1e-9, abs=1e-12
                )
                rows.append(row)
                hyps.append(h)
        for h, score in zip(hyps, rescore(run.model, run.src, rows, hyps)[0]):
            assert h.score == pytest.approx(score, abs=1e-4)


@pytest.mark.parametrize("search_run", list(KINDS), indirect=True)
def test_beam_size_one_equals_greedy(search_run):
    run = search_run
    for g, (b,) in zip(run.greedy, run.beam1):
        assert b.tokens == g.tokens
        assert b.score == pytest.approx(g.score, abs=1e-5)


@pytest.mark.parametrize("search_run", list(KINDS), indirect=True)
def test_beam_best_score_is_not_below_greedy(search_run):
    """With alpha 0 beam search ranks by the model's own sum of log-probs. (Beam search with
    early stopping is not guaranteed to beat greedy on every model; it does on these.)"""
    run = search_run
    for g, nbest in zip(run.greedy, run.beam):
        assert nbest[0].score == max(h.score for h in nbest)
        assert nbest[0].score >= g.score - 1e-5


@pytest.mark.parametrize("search_run", list(KINDS), indirect=True)
def test_sentence_decoded_alone_equals_decoded_in_batch(search_run):
    run = search_run
    # The longest sentence (the others finish first and leave the batch) and the shortest
    # (the most padded one).
    for row in (0, 1):
        alone_src = run.src[row : row + 1, : SEARCH_LENGTHS[row]]
        (g,) = greedy_search(run.model, alone_src, GREEDY)
        assert g.tokens == run.greedy[row].tokens
        assert g.score == pytest.approx(run.greedy[row].score, abs=1e-4)
        (b,) = beam_search(run.model, alone_src, beam_options(3, 0.0), nbest=3)
        assert [h.tokens for h in b] == [h.tokens for h in run.beam[row]]
        assert [h.score for h in b] == pytest.approx([h.score for h in run.beam[row]], abs=1e-4)


# -- dropout ---------------------------------------------------------------------------------


def test_dropout_keeps_each_value_scaled_or_zeroes_it_at_rate_p():
    torch.manual_seed(0)
    x = torch.rand(1000, 1000) + 0.5  # no zeros of its own
    p = 0.3
    y = Dropout(p).train()(x)
    dropped = y == 0
    # 1e6 Bernoulli(0.3) draws: the rate is within 5 standard deviations (0.00046 each).
    assert abs(dropped.double().mean().item() - p) < 5 * math.sqrt(p * (1 - p) / x.numel())
    torch.testing.assert_close(y[~dropped], x[~dropped] / (1 - p), rtol=1e-6, atol=0)
    # Independent masks across calls, and the same mask from the same seed (exact resume).
    assert not torch.equal(Dropout(p).train()(x) == 0, dropped)
    torch.manual_seed(0)
    torch.rand(1000, 1000)
    assert torch.equal(Dropout(p).train()(x), y)


def test_dropout_gradient_is_the_scaled_mask():
    torch.manual_seed(1)
    x = torch.randn(64, 50, dtype=torch.float64, requires_grad=True)
    y = Dropout(0.4).train()(x)
    upstream = torch.randn_like(y)
    (y * upstream).sum().backward()
    kept = (y != 0).double()
    torch.testing.assert_close(x.grad, upstream * kept / 0.6)  # d(x·m/keep)/dx = m/keep


def test_dropout_is_the_identity_in_eval_mode_and_at_zero():
    x = torch.randn(8, 9)
    assert Dropout(0.5).eval()(x) is x
    assert Dropout(0.0).train()(x) is x
