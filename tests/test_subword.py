"""Subword regularisation (train.subword_alpha): each epoch's training pairs are segmented anew
by SentencePiece's sampling, keep their text, differ between epochs, repeat for the same epoch,
and a run that samples still resumes exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import tiny_recipe
from test_resume import assert_same_losses, make_recipe, step_losses

from nmt import config
from nmt.data.dataset import Prepared, SubwordSampler
from nmt.data.preprocess import preprocess
from nmt.data.tokenizer import UNK
from nmt.training import loop as train

MAX_LEN = 64


def sampler_for(
    prepared_dir: Path, alpha: float, nbest: int = -1
) -> tuple[SubwordSampler, Prepared]:
    prepared = Prepared.open(prepared_dir)
    train_data = prepared.dataset("train")
    sampler = SubwordSampler(train_data, prepared.src_tok, prepared.tgt_tok, alpha, nbest, MAX_LEN)
    return sampler, prepared


@pytest.fixture(scope="module")
def bpe_prepared(tmp_path_factory, small_corpus) -> Path:
    folder = tmp_path_factory.mktemp("bpe")
    recipe = config.from_dict(
        tiny_recipe(small_corpus, folder / "run", tokenizer={"type": "bpe", "vocab_size": 200})
    )
    preprocess(recipe)
    return recipe.prepared_dir


def test_unigram_sampling_keeps_the_text_and_draws_anew_each_epoch(toy_prepared):
    sampler, prepared = sampler_for(toy_prepared, alpha=0.5)
    stored = prepared.dataset("train")
    first, again, second = sampler.epoch(11), sampler.epoch(11), sampler.epoch(12)
    for side, tok in (("src", prepared.src_tok), ("tgt", prepared.tgt_tok)):
        kept = getattr(stored, side).sequences()
        a, b, c = (getattr(d, side).sequences() for d in (first, again, second))
        assert a == b  # the same epoch seed, the same segmentations (an exact resume needs it)
        # Every sentence still spells its own text, in other pieces for a good share of them.
        assert tok.decode(a) == tok.decode(kept)
        assert sum(x != y for x, y in zip(a, kept)) > 0.2 * len(kept)
        assert sum(x != y for x, y in zip(a, c)) > 0.2 * len(kept)
        assert max(len(x) for x in a) <= MAX_LEN
        assert all(UNK not in x for x in a)


def test_bpe_dropout_only_splits_further(bpe_prepared):
    """BPE-dropout leaves merges out: sentences come out in more pieces on the whole, and
    alpha 1 (every merge dropped) leaves single characters."""
    sampler, prepared = sampler_for(bpe_prepared, alpha=0.1)
    stored = prepared.dataset("train").tgt
    sampled = sampler.epoch(5).tgt
    assert sampled.lengths.sum() > 1.05 * stored.lengths.sum()
    assert prepared.tgt_tok.decode(sampled.sequences()) == prepared.tgt_tok.decode(
        stored.sequences()
    )
    chars = (
        SubwordSampler(
            prepared.dataset("train"), prepared.src_tok, prepared.tgt_tok, 1.0, -1, 10_000
        )
        .epoch(5)
        .tgt
    )
    tok = prepared.tgt_tok
    for ids in chars.sequences()[:50]:
        pieces = [p.lstrip("\u2581") for p in tok.id_pieces(ids)]
        assert all(len(p) <= 1 for p in pieces), pieces


def test_a_run_that_samples_resumes_exactly_across_epochs(tmp_path, small_corpus):
    """Stopped in its second epoch and resumed, the run's per-step losses are those of a run
    never stopped: the resumed epoch is sampled again, the same way."""
    # Large batches make epochs of a few updates, so 10 updates span several epochs.
    values = {"max_tokens": 16384, "subword_alpha": 0.3, "max_steps": 10, "valid_every": 5}
    prep = tmp_path / "prepared"
    for name in ("p", "whole", "split", "plain"):
        (tmp_path / name).mkdir()
    preprocess(config.load(make_recipe(tmp_path / "p", small_corpus, prep, **values)))
    whole = make_recipe(tmp_path / "whole", small_corpus, prep, **values)
    result = train.train(config.load(whole), progress=False)
    assert result.epochs >= 3
    split = make_recipe(tmp_path / "split", small_corpus, prep, **values)
    first = train.train(config.load(split, ["train.max_steps=5"]), progress=False)
    assert 1 < first.epochs < result.epochs
    train.train(config.load(split), progress=False)
    assert_same_losses(
        step_losses(tmp_path / "split" / "run"), step_losses(tmp_path / "whole" / "run")
    )
    # And the sampling changes training: the same run without it logs other losses.
    plain = make_recipe(tmp_path / "plain", small_corpus, prep, **{**values, "subword_alpha": 0.0})
    train.train(config.load(plain), progress=False)
    assert step_losses(tmp_path / "plain" / "run") != step_losses(tmp_path / "whole" / "run")
