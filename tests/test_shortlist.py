"""The lexical shortlist (nmt.decoding.shortlist): IBM Model 1 against a float64 loop written
from the model's definition, the lists it keeps, decoding over a shortlist, and the CLI."""

from __future__ import annotations

import math
import shutil

import torch
from test_cli import nmt
from test_model import make_model, random_batch

from nmt.config import DecodeConfig
from nmt.data.tokenizer import EOS, PAD, UNK
from nmt.decoding import shortlist as lexical
from nmt.decoding.search import beam_search, greedy_search
from nmt.models.quantize import quantize_int8


def _model1_by_hand(pairs, iterations):
    """IBM Model 1 as its definition reads, one sentence and one token at a time, in float64:
    t(f | e) from uniform; E step: c(f | e) += t(f | e) / Σ_e' t(f | e') over the sentence's
    source words with the empty word; M step: t(f | e) = c(f | e) / Σ_f c(f | e)."""
    t: dict[tuple[int, int], float] = {}
    for src, tgt in pairs:
        for e in [PAD, *src]:
            for f in tgt:
                t[(e, f)] = 1.0
    for e in {e for e, _ in t}:
        targets = [f for (e2, f) in t if e2 == e]
        for f in targets:
            t[(e, f)] = 1.0 / len(targets)
    for _ in range(iterations):
        count: dict[tuple[int, int], float] = dict.fromkeys(t, 0.0)
        for src, tgt in pairs:
            words = [PAD, *src]
            for f in tgt:
                total = sum(t[(e, f)] for e in words)
                for e in words:
                    count[(e, f)] += t[(e, f)] / total
        for e in {e for e, _ in t}:
            total = sum(c for (e2, _), c in count.items() if e2 == e)
            for (e2, f), c in count.items():
                if e2 == e:
                    t[(e2, f)] = c / total
    return t


def test_model1_probabilities_equal_the_definition():
    g = torch.Generator().manual_seed(3)
    pairs = []
    for _ in range(12):
        src = torch.randint(4, 10, (int(torch.randint(1, 5, (1,), generator=g)),), generator=g)
        tgt = torch.randint(4, 9, (int(torch.randint(1, 5, (1,), generator=g)),), generator=g)
        pairs.append((src.tolist(), tgt.tolist()))
    ours = lexical.translation_probabilities(
        [s for s, _ in pairs], [t for _, t in pairs], 10, 9, iterations=4
    )
    reference = _model1_by_hand(pairs, 4)
    got = {(int(s), int(t)): float(p) for s, t, p in zip(*ours)}
    assert got.keys() == reference.keys()
    for key, p in reference.items():
        assert math.isclose(got[key], p, rel_tol=1e-12), key


def test_shortlist_keeps_each_word_s_translations_and_the_frequent_words():
    """Source word w translates as target word w + 10 in sentences of shuffled words; target
    word 30 is in every sentence (an article). Each word's list starts with its translation;
    every batch may use the article, EOS, UNK and the guide's extra tokens, and nothing else
    beyond its words' lists."""
    g = torch.Generator().manual_seed(4)
    src, tgt = [], []
    for _ in range(300):
        words = (torch.randperm(16, generator=g)[:4] + 4).tolist()
        src.append(words)
        tgt.append([30] + [w + 10 for w in reversed(words)])
    sl = lexical.build(src, tgt, 20, 32, per_token=3, frequent=1)
    for w in range(4, 20):
        assert int(sl.table[w, 0]) == w + 10
    assert sl.frequent.tolist() == [30]
    allowed = sl.allowed(torch.tensor([[5, 6, PAD]]), extra=[7]).tolist()
    assert allowed == sorted(set(sl.table[[5, 6]].flatten().tolist()) | {30, EOS, UNK, 7})
    assert 15 in allowed and 16 in allowed and 17 not in allowed


def test_decoding_over_a_shortlist_renormalises_over_it():
    """A step over a shortlist gives the full step's logits renormalised over the listed ids,
    -inf elsewhere; a list of the whole vocabulary decodes as no list does."""
    model = make_model("multihead", "post", seed=13, decoder_layers=2)
    src = random_batch([5, 3])
    vocab = torch.tensor([EOS, 5, 7, 8, 11])
    with torch.no_grad():
        full_state, short_state = model.start(src), model.start(src, vocab)
        tokens = torch.full((2, 1), 2)
        full, short = model.step(full_state, tokens), model.step(short_state, tokens)
    logits = full[:, vocab]  # log-probs differ from logits by a per-row constant
    torch.testing.assert_close(short[:, vocab], logits.log_softmax(-1), atol=1e-5, rtol=1e-5)
    outside = torch.ones(full.shape[1], dtype=torch.bool)
    outside[vocab] = False
    assert bool(short[:, outside].eq(-math.inf).all())

    everything = torch.arange(full.shape[1])
    options = DecodeConfig(beam_size=3, max_len_a=1.0, max_len_b=2)
    greedy = DecodeConfig(method="greedy", max_len_a=1.0, max_len_b=2)
    assert beam_search(model, src, options, vocab=everything) == beam_search(model, src, options)
    assert greedy_search(model, src, greedy, vocab=everything) == greedy_search(model, src, greedy)
    for hyps in beam_search(model, src, options, vocab=vocab):
        assert set(hyps[0].tokens) <= set(vocab.tolist())
    quantize_int8(model)  # int8 layers, the shortlist's rows from the float embedding
    for hyps in beam_search(model, src, options, vocab=vocab):
        assert set(hyps[0].tokens) <= set(vocab.tolist())


class _Listed:
    """`model` with the shortlist built into its start: the search sees full rows with -inf
    outside the list and chooses among all columns, as it did before it learned to choose
    among the list's columns only."""

    def __init__(self, model, vocab):
        self.model, self.vocab = model, vocab
        self.max_output_length = model.max_output_length

    def start(self, src, vocab=None):
        return self.model.start(src, self.vocab)

    def step(self, state, tokens):
        return self.model.step(state, tokens)

    def reorder(self, state, order, source_order=None):
        self.model.reorder(state, order, source_order)


def test_beam_search_over_a_shortlist_chooses_as_over_full_rows():
    """Candidates chosen among the shortlist's columns are those of the full rows (where
    every other column is -inf): same tokens, same scores, n-best lists included."""
    model = make_model("multihead", "pre", seed=5, decoder_layers=2)
    src = random_batch([6, 2, 4, 5])
    vocab = torch.tensor([EOS, UNK, 4, 6, 7, 9, 11])
    with torch.no_grad():
        for options, nbest in (
            (DecodeConfig(beam_size=4, max_len_a=1.5, max_len_b=3), 1),
            (DecodeConfig(beam_size=3, max_len_a=1.0, max_len_b=4, min_len=2), 3),
            (DecodeConfig(beam_size=5, no_repeat_ngram=2, length_penalty=0.6), 2),
        ):
            listed = beam_search(model, src, options, nbest=nbest, vocab=vocab)
            full_rows = beam_search(_Listed(model, vocab), src, options, nbest=nbest)
            assert listed == full_rows
            assert all(set(h.tokens) <= set(vocab.tolist()) for hyps in listed for h in hyps)


def test_translate_with_a_shortlist_builds_it_once(trained_run, tmp_path):
    run = shutil.copytree(trained_run, tmp_path / "run")  # the shared run folder stays as it is
    text = "The dog laughed.\n\nA cat saw the boy.\n"
    plain = nmt("translate", run, "--beam-size", "3", input=text)
    first = nmt("translate", run, "--beam-size", "3", "--shortlist", input=text)
    assert plain.exit_code == first.exit_code == 0, first.output
    assert len(first.stdout.splitlines()) == 3 and first.stdout.splitlines()[1] == ""
    built = run / lexical.FILE
    assert built.is_file()
    stamp = built.stat().st_mtime_ns
    again = nmt("translate", run, "--beam-size", "3", "--shortlist", input=text)
    assert again.stdout == first.stdout and built.stat().st_mtime_ns == stamp
