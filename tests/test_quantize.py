"""Dynamic int8 quantization (`--quantize int8`): close to fp32, cached decoding still consistent.

The BLEU of a trained int8 model against fp32 is checked in test_learning.py.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from test_cli import assert_user_error, nmt

from nmt.config import ModelConfig
from nmt.model import build_model
from nmt.quantize import quantize_int8
from nmt.search import beam_search

VOCAB = 50


def model_with(attention: str) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = ModelConfig(
        d_model=64,
        heads=4,
        ff_dim=128,
        encoder_layers=2,
        decoder_layers=2,
        dropout=0.0,
        attention=attention,
    )
    return build_model(cfg, VOCAB, VOCAB, joint_vocab=True).eval()


@pytest.mark.parametrize("attention", ["multihead", "luong", "bahdanau"])
def test_int8_log_probs_are_close_to_fp32(attention):
    model = model_with(attention)
    int8 = quantize_int8(copy.deepcopy(model))
    src = torch.randint(4, VOCAB, (4, 9))
    src[2, 5:] = 0  # padding
    tgt = torch.randint(4, VOCAB, (4, 7))
    with torch.inference_mode():
        expected = F.log_softmax(model(src, tgt), -1)
        got = F.log_softmax(int8(src, tgt), -1)
    # Every linear layer, the output projection included, now runs in int8.
    dynamic = torch.ao.nn.quantized.dynamic.Linear
    assert not any(type(m) is torch.nn.Linear for m in int8.modules())
    # 4 per attention site (6 sites: in_proj, out_proj, and the split query and key/value
    # copies), 2 per feed-forward (4 layers), and the output projection.
    assert sum(isinstance(m, dynamic) for m in int8.modules()) == 6 * 4 + 4 * 2 + 1
    # int8 weights with per-row scales: a few hundredths of a nat on log-probabilities of ~-5
    # (a randomly initialised model; a trained one is checked by BLEU in test_learning.py).
    error = (got - expected).abs()
    assert error.mean() < 0.04 and error.max() < 0.25
    assert (got.argmax(-1) == expected.argmax(-1)).float().mean() > 0.9


@pytest.mark.parametrize("attention", ["multihead", "bahdanau"])
def test_int8_incremental_decoding_matches_its_full_forward(attention):
    int8 = quantize_int8(model_with(attention))
    src = torch.randint(4, VOCAB, (3, 8))
    tgt = torch.randint(4, VOCAB, (3, 6))
    with torch.inference_mode():
        full = F.log_softmax(int8(src, tgt), -1)
        memory, mask = int8.encode(src)
        cache = int8.new_cache()
        steps = [
            F.log_softmax(int8.decode(tgt[:, t : t + 1], memory, mask, cache, t)[0], -1)
            for t in range(tgt.shape[1])
        ]
    # Activations are quantized per call (one range per tensor), so one step at a time sees
    # other ranges than the whole sequence at once: as close as int8 is to fp32, not equal.
    assert (torch.cat(steps, 1) - full).abs().max() < 0.2
    assert (torch.cat(steps, 1).argmax(-1) == full.argmax(-1)).float().mean() > 0.9


def test_int8_beam_search_runs_and_mostly_agrees_with_fp32():
    model = model_with("multihead")
    int8 = quantize_int8(copy.deepcopy(model))
    src = torch.randint(4, VOCAB, (6, 7))
    with torch.inference_mode():
        a = beam_search(model, src, 4, 1.0, 1.0, 8)
        b = beam_search(int8, src, 4, 1.0, 1.0, 8)
    assert len(b) == 6 and all(len(h) >= 1 for h in b)
    same = sum(x[0].tokens == y[0].tokens for x, y in zip(a, b))
    assert same >= 4


def test_cli_quantize(trained_run, tmp_path):
    text = "The dog laughed.\n\nA cat saw the boy.\n"
    result = nmt("translate", trained_run, "--quantize", "int8", input=text)
    assert result.exit_code == 0 and len(result.stdout.splitlines()) == 3
    assert_user_error(nmt("translate", trained_run, "--quantize", "int4", input=text), "int4")
