"""Guided search: target prefixes (every search) and lexical constraints (beam search with
dynamic beam allocation), on tiny random models of every attention kind.

Checked: outputs start with their prefix; every finished hypothesis holds every constraint
phrase; reported scores equal teacher-forced rescoring (forced tokens are scored like any
other); a sentence decodes the same alone and in a batch; no guide changes nothing.
"""

from __future__ import annotations

import pytest
import torch
from test_model import KINDS, make_model, random_batch, rescore

from nmt.config import DecodeConfig
from nmt.decoding.search import Guide, Progress, beam_search, greedy_search, search
from nmt.errors import NmtError

LENGTHS = [5, 2, 4, 6]
BEAM = DecodeConfig(beam_size=4, length_penalty=1.0, max_len_a=1.0, max_len_b=3)
GREEDY = DecodeConfig(method="greedy", max_len_a=1.0, max_len_b=3)


def contains(tokens: list[int], phrase: list[int]) -> bool:
    n = len(phrase)
    return any(tokens[i : i + n] == phrase for i in range(len(tokens) - n + 1))


@pytest.fixture(scope="module", params=list(KINDS))
def setup(request):
    model = make_model(request.param, seed=21, decoder_layers=2, eos_scale=0.8)
    torch.manual_seed(21)
    return model, random_batch(LENGTHS)


def _check_scores(model, src, hyp_lists):
    rows, hyps = [], []
    for row, nbest in enumerate(hyp_lists):
        for h in nbest:
            rows.append(row)
            hyps.append(h)
    for h, score in zip(hyps, rescore(model, src, rows, hyps)[0]):
        assert h.score == pytest.approx(score, abs=1e-4)


def test_progress_follows_phrases_and_unwinds():
    phrases = [[5, 6, 7], [9]]
    p = Progress((False, False))
    p = p.advance(5, phrases).advance(6, phrases)
    assert (p.matched, p.count(phrases)) == ((2, 0), 2)
    p = p.advance(8, phrases)  # breaks phrase 0: its tokens no longer count
    assert (p.matched, p.count(phrases), p.wanted(phrases)) == ((0, 0), 0, [5, 9])
    p = p.advance(9, phrases).advance(5, phrases).advance(6, phrases).advance(7, phrases)
    assert p.done() and p.count(phrases) == 4 and p.remaining(phrases) == 0


def test_progress_tracks_phrases_that_begin_alike():
    """Two phrases after the same first piece (a lone "▁" before two words) are both followed:
    the second is met even though the first one's match began at the same token."""
    phrases = [[3, 10, 11], [3, 20, 21]]
    p = Progress((False, False))
    for token in (3, 20, 21):
        p = p.advance(token, phrases)
    assert p.met == (False, True) and p.wanted(phrases) == [3]
    for token in (3, 10, 11):
        p = p.advance(token, phrases)
    assert p.done()


def test_progress_falls_back_to_a_shorter_match():
    """A break keeps the longest partial match still true: 4 4 6 is met in 4 4 4 6."""
    phrases = [[4, 4, 6]]
    p = Progress((False,))
    for token in (4, 4, 4):
        p = p.advance(token, phrases)
    assert p.matched == (2,) and not p.done()
    assert p.advance(6, phrases).done()


def test_prefixes_are_continued_by_every_search(setup):
    model, src = setup
    prefixes = [[7, 8], [], [4], [9, 9, 10]]
    guide = Guide(prefixes, [[] for _ in prefixes])
    for options in (GREEDY, BEAM):
        results = search(model, src, options, nbest=2, guide=guide)
        for prefix, nbest in zip(prefixes, results):
            for h in nbest:
                assert h.tokens[: len(prefix)] == prefix
        _check_scores(model, src, results)
    # No prefix at all: the same as unguided search.
    empty = Guide([[] for _ in LENGTHS], [[] for _ in LENGTHS])
    guided = beam_search(model, src, BEAM, nbest=3, guide=empty)
    plain = beam_search(model, src, BEAM, nbest=3)
    assert [[h.tokens for h in n] for n in guided] == [[h.tokens for h in n] for n in plain]


def test_every_finished_hypothesis_holds_every_constraint(setup):
    model, src = setup
    constraints = [[[11, 12], [5]], [[8]], [], [[4, 4, 6], [10, 9]]]
    guide = Guide([[] for _ in LENGTHS], constraints)
    results = beam_search(model, src, BEAM, nbest=4, guide=guide)
    for phrases, nbest in zip(constraints, results):
        assert nbest and all(h.score > float("-inf") for h in nbest)
        for h in nbest:
            assert all(contains(h.tokens, phrase) for phrase in phrases), (h.tokens, phrases)
    _check_scores(model, src, results)
    # The second sentence's output limit is 1.0 * 2 + 3 = 5; the fourth's constraints alone
    # need 5 of its 9 tokens: the limit stretches for them when needed.
    with_prefix = Guide([[9], [], [], []], constraints)
    for h in beam_search(model, src, BEAM, guide=with_prefix)[0]:
        assert h.tokens[0] == 9 and contains(h.tokens, [11, 12]) and contains(h.tokens, [5])


def test_guided_sentence_alone_equals_in_a_batch(setup):
    model, src = setup
    prefixes = [[6], [], [7, 5], []]
    constraints = [[[10]], [[4, 5]], [], [[12], [8]]]
    batch = beam_search(model, src, BEAM, nbest=2, guide=Guide(prefixes, constraints))
    for row in range(len(LENGTHS)):
        alone_src = src[row : row + 1, : LENGTHS[row]]
        guide = Guide([prefixes[row]], [constraints[row]])
        (alone,) = beam_search(model, alone_src, BEAM, nbest=2, guide=guide)
        assert [h.tokens for h in alone] == [h.tokens for h in batch[row]]
        assert [h.score for h in alone] == pytest.approx([h.score for h in batch[row]], abs=1e-4)


def test_constraints_need_beam_search(setup):
    model, src = setup
    guide = Guide([[] for _ in LENGTHS], [[[5]], [], [], []])
    with pytest.raises(NmtError, match="constraints need beam search"):
        search(model, src, GREEDY, guide=guide)
    # Greedy with prefixes only is fine.
    greedy = greedy_search(model, src, GREEDY, prefixes=[[5], [], [], []])
    assert greedy[0].tokens[0] == 5
