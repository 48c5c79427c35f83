"""The C library's handling of freed memory on CPU (nmt.utils.device.reuse_freed_memory)."""

import subprocess
import sys

import pytest

from nmt.utils.device import glibc

# Allocates and frees a 64 MiB tensor (the size of a training step's logits) twenty times and
# prints the page faults the last ten caused: each fresh mapping faults once per page.
_CHURN = """
import resource, sys, torch
from nmt.utils.device import reuse_freed_memory
if sys.argv[1] == "reuse":
    assert reuse_freed_memory()
for _ in range(10):  # the heap grows over the first few, then holds free blocks to reuse
    torch.ones(16 * 2**20).sum()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    torch.ones(16 * 2**20).sum()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", _CHURN, mode], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(glibc() is None, reason="the setting is glibc's")
def test_freed_blocks_are_reused_without_page_faults():
    pages = 64 * 2**20 // 4096
    assert _faults("glibc") >= 10 * pages * 0.9  # each allocation a fresh, faulting mapping
    # The freed block comes back without faulting again; under a parallel suite the process
    # once faulted exactly one allocation's pages (16,384 of 163,840), so allow one of ten.
    assert _faults("reuse") <= pages


@pytest.mark.skipif(glibc() is not None, reason="elsewhere the setting is left alone")
def test_reports_when_it_cannot_apply():
    from nmt.utils.device import reuse_freed_memory

    assert reuse_freed_memory() is False


def test_resolving_a_gpu_turns_cudnn_attention_off(monkeypatch):
    """The setting is made wherever a GPU is resolved (training, translation, serving), and
    never on CPU. Checked on a GPU itself in tests/test_cuda.py."""
    import torch

    from nmt.utils.device import resolve_device

    calls = []
    monkeypatch.setattr(torch.backends.cuda, "enable_cudnn_sdp", calls.append)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto").type == "cpu"
    assert calls == []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto").type == "cuda"
    assert resolve_device("cuda").type == "cuda"
    assert calls == [False, False]
