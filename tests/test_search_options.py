"""Search options: n-gram blocking, minimum length, sampling (temperature, top-k, top-p)."""

from __future__ import annotations

import math

import pytest
import torch

from nmt.config import DecodeConfig, ModelConfig
from nmt.data.tokenizer import EOS, PAD
from nmt.decoding.search import Sampler, beam_search, best_tokens, greedy_search, top_candidates
from nmt.models.builder import build_model

VOCAB = 12


def repetitive_model() -> torch.nn.Module:
    """A random tiny model, with EOS made unlikely so that outputs run long and repeat."""
    torch.manual_seed(3)
    cfg = ModelConfig(
        d_model=16, heads=2, ff_dim=32, encoder_layers=1, decoder_layers=1, dropout=0.0
    )
    model = build_model(cfg, VOCAB, VOCAB, share_all=True).eval()
    with torch.no_grad():
        model.tgt_embed.weight[EOS] *= 0.0
    return model


def source() -> torch.Tensor:
    torch.manual_seed(4)
    src = torch.randint(4, VOCAB, (4, 6))
    src[1, 4:] = PAD
    src[2, 2:] = PAD
    return src


def greedy(**options) -> DecodeConfig:
    return DecodeConfig(**{"method": "greedy", "max_len_a": 1.0, "max_len_b": 8, **options})


def beam(**options) -> DecodeConfig:
    return DecodeConfig(beam_size=3, length_penalty=1.0, max_len_a=1.0, max_len_b=8, **options)


def ngrams(tokens: list[int], n: int) -> list[tuple[int, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("search", ["greedy", "beam"])
def test_no_repeat_ngram(n, search):
    model, src = repetitive_model(), source()

    def run(block: int):
        if search == "greedy":
            return [h.tokens for h in greedy_search(model, src, greedy(no_repeat_ngram=block))]
        return [h[0].tokens for h in beam_search(model, src, beam(no_repeat_ngram=block))]

    unblocked = run(0)
    # Without blocking these outputs do repeat (else the test would prove nothing).
    assert any(len(set(ngrams(t, n))) < len(ngrams(t, n)) for t in unblocked)
    for tokens in run(n):
        assert len(set(ngrams(tokens, n))) == len(ngrams(tokens, n)), tokens


@pytest.mark.parametrize("search", ["greedy", "beam"])
def test_min_len(search):
    torch.manual_seed(3)
    cfg = ModelConfig(
        d_model=16, heads=2, ff_dim=32, encoder_layers=1, decoder_layers=1, dropout=0.0
    )
    model = build_model(cfg, VOCAB, VOCAB, share_all=True).eval()
    with torch.no_grad():
        model.tgt_embed.weight[EOS] *= 8.0  # EOS very likely: outputs end at once
    src = source()
    if search == "greedy":
        short = [h.tokens for h in greedy_search(model, src, greedy())]
        longer = [h.tokens for h in greedy_search(model, src, greedy(min_len=4))]
    else:
        short = [h[0].tokens for h in beam_search(model, src, beam())]
        longer = [h[0].tokens for h in beam_search(model, src, beam(min_len=4))]
    assert min(len(t) for t in short) < 4
    assert all(len(t) >= 4 for t in longer)


def test_sampling_is_seeded_and_top_k_1_is_greedy():
    model, src = repetitive_model(), source()
    most_likely = [h.tokens for h in greedy_search(model, src, greedy())]

    def sample(seed: int, **options) -> list[list[int]]:
        generator = torch.Generator().manual_seed(seed)
        hyps = greedy_search(model, src, greedy(method="sample", **options), generator=generator)
        return [h.tokens for h in hyps]

    assert sample(1) == sample(1)
    assert sample(1) != sample(2)
    assert sample(5, top_k=1) == most_likely
    assert sample(5, top_p=1e-6) == most_likely
    assert sample(5, temperature=1e-4) == most_likely


def _filtered_reference(
    lp: list[float], temperature: float, top_k: int, top_p: float
) -> list[float]:
    """The sampling distribution, in float64 from its definition."""
    logits = [x / temperature for x in lp]
    order = sorted(range(len(logits)), key=lambda i: -logits[i])
    keep = set(order[:top_k] if top_k else order)
    z = sum(math.exp(logits[i]) for i in order)
    mass = 0.0
    nucleus = set()
    for i in order:
        if mass >= top_p:
            break
        nucleus.add(i)
        mass += math.exp(logits[i]) / z
    keep &= nucleus
    total = sum(math.exp(logits[i]) for i in keep)
    return [math.exp(logits[i]) / total if i in keep else 0.0 for i in range(len(logits))]


@pytest.mark.parametrize(
    ("temperature", "top_k", "top_p"),
    [(1.0, 0, 1.0), (0.7, 0, 1.0), (1.0, 3, 1.0), (1.3, 0, 0.8), (1.0, 4, 0.6)],
)
def test_sampler_draws_from_the_filtered_distribution(temperature, top_k, top_p):
    lp = torch.tensor([[-0.5, -1.0, -1.5, -2.0, -2.5, -3.0, -4.0]]).log_softmax(-1)
    expected = _filtered_reference(lp[0].tolist(), temperature, top_k, top_p)
    sampler = Sampler(temperature, top_k, top_p, torch.Generator().manual_seed(0))
    n = 20_000
    draws = sampler(lp.expand(n, -1))
    freq = torch.bincount(draws, minlength=lp.shape[1]).double() / n
    for f, p in zip(freq.tolist(), expected):
        if p == 0.0:
            assert f == 0.0
        else:
            assert abs(f - p) < 4 * math.sqrt(p * (1 - p) / n) + 1e-3


@pytest.mark.parametrize("vocab", [5, 32, 33, 8003])
@pytest.mark.parametrize("sentences,beam", [(1, 1), (3, 5)])
def test_candidates_match_a_full_topk(vocab: int, sentences: int, beam: int, monkeypatch) -> None:
    """The two-stage search for candidates (block maxima, then tokens inside the best blocks)
    returns what one `topk` over all beams x tokens does, with the same sums; `best_tokens`
    what `max` does. Dead beams (-inf) and blocked tokens included."""
    import nmt.decoding.search as search_module

    monkeypatch.setattr(search_module, "DIRECT", 0)  # the two stages even for small steps
    g = torch.Generator().manual_seed(vocab)
    for trial in range(6):
        lp = torch.randn(sentences * beam, vocab, generator=g).log_softmax(-1)
        if trial % 3 == 0:
            lp[:, ::3] = -math.inf
        scores = torch.randn(sentences, beam, generator=g)
        if trial % 2:
            scores[:, 1:] = -math.inf
        full = (scores[:, :, None] + lp.view(sentences, beam, vocab)).view(sentences, -1)
        want_values, want_index = full.topk(min(2 * beam, beam * vocab), dim=1)
        values, index = top_candidates(scores, lp, 2 * beam)
        assert torch.equal(values, want_values)
        finite = want_values.isfinite()  # -inf ties may come in any order
        assert torch.equal(index[finite], want_index[finite])
        best, token = best_tokens(lp)
        want_best, want_token = lp.max(dim=-1)
        assert torch.equal(best, want_best) and torch.equal(token, want_token)
