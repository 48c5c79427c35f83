"""Checkpoints: atomic saves that survive a failed write, and loads that run no code."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import torch
from conftest import tiny_recipe

from nmt import checkpoint, config
from nmt.data.preprocess import preprocess
from nmt.data.tokenizer import BOS, EOS, PAD
from nmt.errors import NmtError
from nmt.models.builder import load_model
from nmt.training import loop as train


def state(value: float) -> dict:
    return {"model": {"w": torch.full((4,), value)}, "recipe": {}, "tokenizers": {}}


def test_round_trip(tmp_path):
    path = tmp_path / "last.pt"
    checkpoint.save(state(1.0), path)
    loaded = checkpoint.load(path)
    assert torch.equal(loaded["model"]["w"], torch.ones(4))
    assert loaded["format"] == checkpoint.FORMAT
    assert checkpoint.load(tmp_path)["model"]["w"].sum() == 4  # a folder: best.pt or last.pt


def _fail_fsync(fd):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _fail_torch_save(obj, f):
    f.write(b"PK\x03\x04 partial")
    raise RuntimeError(
        "[enforce fail at inline_container.cc:664] . unexpected pos; file write failed"
    )


@pytest.mark.parametrize(
    ("target", "replacement", "message"),
    [
        ("os.fsync", _fail_fsync, "No space left on device"),
        ("torch.save", _fail_torch_save, "write failed (is the disk full?)"),
    ],
)
def test_failed_write_keeps_previous_checkpoint(
    tmp_path, monkeypatch, target, replacement, message
):
    path = tmp_path / "last.pt"
    checkpoint.save(state(1.0), path)
    before = path.read_bytes()
    monkeypatch.setattr(target, replacement)
    with pytest.raises(
        NmtError, match=message.replace("(", r"\(").replace(")", r"\)").replace("?", r"\?")
    ):
        checkpoint.save(state(2.0), path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left
    assert checkpoint.load(path)["model"]["w"].sum() == 4


@pytest.fixture(scope="module")
def untied_run(tmp_path_factory, small_corpus) -> Path:
    """A tiny model trained with `joint: false` but one SentencePiece model given for both
    sides: the two embeddings were trained apart, although the two tokenizers are equal."""
    folder = tmp_path_factory.mktemp("untied")
    joint = config.from_dict(tiny_recipe(small_corpus, folder / "joint"))
    preprocess(joint)
    spm = str(joint.prepared_dir / "spm.model")
    recipe = config.from_dict(
        tiny_recipe(
            small_corpus,
            folder / "run",
            tokenizer={"joint": False, "src_model": spm, "tgt_model": spm},
            train={"max_steps": 6, "valid_every": 6},
        )
    )
    preprocess(recipe)
    train.train(recipe, progress=False)
    return folder / "run"


def _logits(model: torch.nn.Module) -> torch.Tensor:
    src = torch.tensor([[5, 6, 7, EOS], [8, 9, EOS, PAD]])
    tgt = torch.tensor([[BOS, 5, 6], [BOS, 7, PAD]])
    with torch.no_grad():
        return model.eval()(src, tgt)


def test_joint_false_with_equal_tokenizers_loads_untied(untied_run):
    state = checkpoint.load(untied_run / "last.pt")
    assert state["model_args"]["share_all"] is False
    _, model, src_tok, tgt_tok = load_model(state)
    assert len(src_tok) == len(tgt_tok)
    assert model.src_embed is not model.tgt_embed
    trained = state["model"]
    assert not torch.equal(trained["src_embed.weight"], trained["tgt_embed.weight"])
    assert torch.equal(model.src_embed.weight, trained["src_embed.weight"])


def _as_format_1(state: dict) -> dict:
    """A format-2 checkpoint written the way format 1 stored it: no model_args, each
    cross-attention's Q/K/V in one in_proj, no output_projection of its own."""
    weights = dict(state["model"])
    for name in [n for n in weights if n.endswith("cross_attn.q_proj.weight")]:
        prefix = name.removesuffix("q_proj.weight")
        q_w, q_b = weights.pop(name), weights.pop(prefix + "q_proj.bias")
        kv_w, kv_b = weights.pop(prefix + "kv_proj.weight"), weights.pop(prefix + "kv_proj.bias")
        weights[prefix + "in_proj.weight"] = torch.cat([q_w, kv_w])
        weights[prefix + "in_proj.bias"] = torch.cat([q_b, kv_b])
    del weights["output_projection.weight"]
    return {
        "format": 1,
        "model": weights,
        "recipe": state["recipe"],
        "tokenizers": state["tokenizers"],
        "step": state["step"],
    }


@pytest.mark.parametrize("run", ["untied", "tied"])
def test_format_1_checkpoints_upgrade_to_the_same_model(tmp_path, untied_run, trained_run, run):
    folder = untied_run if run == "untied" else trained_run
    state = checkpoint.load(checkpoint.resolve(folder))
    path = tmp_path / "old.pt"
    torch.save(_as_format_1(state), path)  # as format 1 wrote it, not through checkpoint.save
    upgraded = checkpoint.load(path)
    assert upgraded["format"] == checkpoint.FORMAT
    assert upgraded["model_args"] == state["model_args"]
    expected = _logits(load_model(state)[1])
    assert torch.equal(_logits(load_model(upgraded)[1]), expected)
