"""Alignments: the teacher-forced cross-attention equals what decoding saw at each step."""

from __future__ import annotations

import json

import torch
from test_cli import assert_user_error, nmt

from nmt.config import ModelConfig
from nmt.data.batches import pad_sequences
from nmt.data.tokenizer import BOS, EOS
from nmt.decoding.engine import TorchEngine
from nmt.models.builder import build_model


def test_cross_attention_equals_incremental_weights():
    torch.manual_seed(0)
    cfg = ModelConfig(
        d_model=16, heads=2, ff_dim=32, encoder_layers=1, decoder_layers=2, dropout=0.0
    )
    model = build_model(cfg, 12, 12, share_all=True).eval()
    engine = TorchEngine(model, torch.device("cpu"))
    src, hyp = [5, 6, 7, 8], [9, 4, 10]
    got = engine.cross_attention(src, [hyp])[0]
    # Prefix by prefix, the last position of each: what the model attends to when it
    # produces each next token.
    src_t = pad_sequences([torch.tensor(src)], None, EOS)
    rows = []
    with torch.no_grad():
        memory, mask = model.encode(src_t)
        prefix = [BOS] + hyp
        for step in range(len(prefix)):
            tokens = torch.tensor([prefix[: step + 1]])
            _, w = model.decode(tokens, memory, mask, need_weights=True)
            rows.append(w.mean(dim=1)[0, -1])
    torch.testing.assert_close(got, torch.stack(rows), atol=1e-6, rtol=1e-5)
    assert got.shape == (len(hyp) + 1, len(src) + 1)
    torch.testing.assert_close(got.sum(-1), torch.ones(len(hyp) + 1))


def test_jsonl_alignment(trained_run):
    text = "The dog laughed.\n\nA cat saw the boy.\n"
    args = ["--beam-size", "3", "--nbest", "2", "--output-format", "jsonl", "--alignment"]
    result = nmt("translate", trained_run, *args, input=text)
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(records) == 3
    for record in records:
        if not record["source"]:
            assert "alignment" not in record["nbest"][0] and "source_tokens" not in record
            continue
        assert record["source_tokens"][-1] == "</s>"
        for hyp in record["nbest"]:
            assert hyp["tokens"][-1] == "</s>"
            assert len(hyp["alignment"]) == len(hyp["tokens"])
            assert all(0 <= a < len(record["source_tokens"]) for a in hyp["alignment"])
    assert_user_error(
        nmt("translate", trained_run, "--alignment", input=text), "needs --output-format jsonl"
    )
