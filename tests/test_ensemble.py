"""Ensembles: averaged log-probabilities, and an ensemble of a model with itself is the model."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from test_cli import assert_user_error, nmt

from nmt.config import DecodeConfig, ModelConfig
from nmt.model import Ensemble, build_model
from nmt.search import beam_search, greedy_search

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
