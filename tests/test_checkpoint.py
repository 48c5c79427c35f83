"""Checkpoints: atomic saves that survive a failed write, and loads that run no code."""

from __future__ import annotations

import errno
import os

import pytest
import torch

from nmt import checkpoint
from nmt.errors import NmtError


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
