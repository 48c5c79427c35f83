"""Ensembles: averaged log-probabilities, and an ensemble of a model with itself is the model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_cli import assert_user_error, nmt

from nmt.config import DecodeConfig, ModelConfig
from nmt.decoding.search import beam_search, greedy_search
from nmt.models.builder import build_model
from nmt.models.ensemble import Ensemble

VOCAB = 14


def tiny(seed: int, d_model: int = 16):
    torch.manual_seed(seed)
    cfg = ModelConfig(
        d_model=d_model, heads=2, ff_dim=32, encoder_layers=1, decoder_layers=1, dropout=0.0
    )
    return build_model(cfg, VOCAB, VOCAB, share_all=True).eval()


def test_step_log_probs_are_the_mean_of_the_models():
    a, b = tiny(1), tiny(2, d_model=24)  # different widths: each member keeps its own state
    ensemble = Ensemble([a, b]).eval()
    src = torch.randint(4, VOCAB, (3, 5))
    tgt = torch.randint(4, VOCAB, (3, 4))
    with torch.no_grad():
        state = ensemble.start(src)
        got = torch.stack([ensemble.step(state, tgt[:, t : t + 1]) for t in range(4)], dim=1)
        mean = (
            F.log_softmax(a(src, tgt).double(), -1) + F.log_softmax(b(src, tgt).double(), -1)
        ) / 2
    # The mean of the log-probabilities, renormalised into a distribution.
    torch.testing.assert_close(got.double(), mean.log_softmax(-1), atol=1e-5, rtol=1e-5)


def test_ensemble_with_itself_equals_the_model():
    model = tiny(3)
    ensemble = Ensemble([model, model]).eval()
    src = torch.randint(4, VOCAB, (4, 6))
    src[1, 3:] = 0
    greedy = DecodeConfig(method="greedy", max_len_a=1.0, max_len_b=6)
    beam = DecodeConfig(beam_size=3, max_len_a=1.0, max_len_b=6)
    for search in (
        lambda m: [h.tokens for h in greedy_search(m, src, greedy)],
        lambda m: [[h.tokens for h in hs] for hs in beam_search(m, src, beam, nbest=3)],
    ):
        assert search(ensemble) == search(model)


def test_cli_ensemble(trained_run, tmp_path):
    text = "The dog laughed.\nA cat saw the boy.\n"
    alone = nmt("translate", trained_run / "best.pt", input=text)
    twice = nmt("translate", trained_run / "best.pt", trained_run / "best.pt", input=text)
    assert alone.exit_code == 0 and twice.stdout == alone.stdout
    two = nmt("translate", trained_run / "best.pt", trained_run / "last.pt", input=text)
    assert two.exit_code == 0 and len(two.stdout.splitlines()) == 2
    other = torch.load(trained_run / "best.pt", weights_only=True)
    other["tokenizers"] = {"src": b"x", "tgt": b"x"}
    torch.save(other, tmp_path / "other.pt")
    assert_user_error(
        nmt("translate", trained_run / "best.pt", tmp_path / "other.pt", input=text),
        "other vocabularies",
    )


def _preprocessed_models(tmp_path, corpus, name, **tokenizer):
    """The SentencePiece model `nmt preprocess` trains for the tiny recipe, in its own folder."""
    from conftest import tiny_recipe

    from nmt import config
    from nmt.data.preprocess import preprocess

    recipe = config.from_dict(tiny_recipe(corpus, tmp_path / name, tokenizer=tokenizer))
    preprocess(recipe)
    return (recipe.prepared_dir / "spm.model").read_bytes()


def test_runs_preprocessed_apart_from_the_same_text_make_an_ensemble(
    trained_run, small_corpus, tmp_path
):
    import shutil

    from nmt.checkpoint import same_tokenizers

    # The same corpus at another path, preprocessed into another run folder: the model's bytes
    # differ (it records its training files and output path), its pieces do not.
    copy = tmp_path / "corpus_copy"
    shutil.copytree(small_corpus, copy)
    here = _preprocessed_models(tmp_path, small_corpus, "here")
    there = _preprocessed_models(tmp_path, copy, "there")
    bigger = _preprocessed_models(tmp_path, small_corpus, "bigger", vocab_size=130)
    assert here != there
    assert same_tokenizers({"src": here, "tgt": here}, {"src": there, "tgt": there})
    assert not same_tokenizers({"src": here, "tgt": here}, {"src": bigger, "tgt": bigger})
    assert not same_tokenizers({"src": here, "tgt": here}, {"src": b"x", "tgt": b"x"})

    best = torch.load(trained_run / "best.pt", weights_only=True)
    assert same_tokenizers(best["tokenizers"], {"src": there, "tgt": there})
    best["tokenizers"] = {"src": there, "tgt": there}
    torch.save(best, tmp_path / "apart.pt")
    text = "The dog laughed.\nA cat saw the boy.\n"
    alone = nmt("translate", trained_run / "best.pt", input=text)
    both = nmt("translate", trained_run / "best.pt", tmp_path / "apart.pt", input=text)
    assert both.exit_code == 0, both.output
    assert both.stdout == alone.stdout
    best["tokenizers"] = {"src": bigger, "tgt": bigger}
    torch.save(best, tmp_path / "bigger.pt")
    assert_user_error(
        nmt("translate", trained_run / "best.pt", tmp_path / "bigger.pt", input=text),
        "other vocabularies",
    )


def test_paths_left_out_as_protobuf_itself_would(small_corpus, tmp_path):
    pb = pytest.importorskip("sentencepiece.sentencepiece_model_pb2")
    from nmt.checkpoint import _without_paths

    proto = _preprocessed_models(tmp_path, small_corpus, "run")
    message = pb.ModelProto()
    message.ParseFromString(proto)
    assert list(message.trainer_spec.input) and message.trainer_spec.model_prefix
    message.trainer_spec.ClearField("input")
    message.trainer_spec.ClearField("model_prefix")
    assert _without_paths(proto) == message.SerializeToString()
