"""Dynamic int8 quantization (`--quantize int8`): close to fp32, cached decoding still consistent.

The BLEU of a trained int8 model against fp32 is checked in test_learning.py.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from test_cli import assert_user_error, nmt

from nmt.config import DecodeConfig, ModelConfig
from nmt.decoding.search import beam_search
from nmt.models.builder import build_model
from nmt.models.quantize import quantize_int8

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
    return build_model(cfg, VOCAB, VOCAB, share_all=True).eval()


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
    # 2 per self-attention site (in_proj, out_proj; 4 sites), 3 per cross-attention site
    # (q_proj, kv_proj, out_proj; 2 sites), 2 per feed-forward (4 layers), the output projection.
    assert sum(isinstance(m, dynamic) for m in int8.modules()) == 4 * 2 + 2 * 3 + 4 * 2 + 1
    # The embedding keeps its float table; the output projection got an int8 copy of it.
    assert int8.tgt_embed.weight.dtype == torch.float32
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
        state = int8.start(src)
        steps = [int8.step(state, tgt[:, t : t + 1])[:, None] for t in range(tgt.shape[1])]
    # Activations are quantized per call (one range per tensor), so one step at a time sees
    # other ranges than the whole sequence at once: as close as int8 is to fp32, not equal.
    assert (torch.cat(steps, 1) - full).abs().max() < 0.2
    assert (torch.cat(steps, 1).argmax(-1) == full.argmax(-1)).float().mean() > 0.9


def test_int8_beam_search_runs_and_mostly_agrees_with_fp32():
    model = model_with("multihead")
    int8 = quantize_int8(copy.deepcopy(model))
    src = torch.randint(4, VOCAB, (6, 7))
    with torch.inference_mode():
        options = DecodeConfig(beam_size=4, length_penalty=1.0, max_len_a=1.0, max_len_b=8)
        a = beam_search(model, src, options)
        b = beam_search(int8, src, options)
    assert len(b) == 6 and all(len(h) >= 1 for h in b)
    same = sum(x[0].tokens == y[0].tokens for x, y in zip(a, b))
    assert same >= 4


def test_cli_quantize(trained_run, tmp_path):
    text = "The dog laughed.\n\nA cat saw the boy.\n"
    result = nmt("translate", trained_run, "--quantize", "int8", input=text)
    assert result.exit_code == 0 and len(result.stdout.splitlines()) == 3
    assert_user_error(nmt("translate", trained_run, "--quantize", "int4", input=text), "int4")
