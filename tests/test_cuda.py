"""The CUDA paths: run on a machine with a GPU (`python -m pytest -m cuda`); skipped elsewhere.

Checked against the CPU: the forward and backward pass of each attention kind in fp32, bf16 and
fp16 autocast losses, fp16 loss scaling with an injected overflow, the fused SDPA kernels, beam
search on a trained model, and int8 quantization's refusal on a GPU.
"""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import tiny_recipe
from test_cli import assert_user_error, nmt

from nmt import config
from nmt.config import ModelConfig
from nmt.data.batches import collate
from nmt.data.dataset import Prepared
from nmt.data.preprocess import preprocess
from nmt.decoding.translator import Translator
from nmt.models.builder import build_model
from nmt.training.loss import batch_loss
from nmt.training.run import initial_model
from nmt.training.trainer import Trainer

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

KINDS = ["multihead", "luong", "bahdanau"]


def _model(attention: str) -> torch.nn.Module:
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
    return build_model(cfg, 60, 60, share_all=True)


def _batch(seed: int = 1):
    from nmt.data.batches import Batch, pad_sequences

    generator = torch.Generator().manual_seed(seed)
    lengths = [9, 4, 7, 12, 3, 8]
    src = [torch.randint(4, 60, (n,), generator=generator) for n in lengths]
    tgt = [torch.randint(4, 60, (n + 1,), generator=generator) for n in lengths]
    tgt_out = pad_sequences(tgt, None, 3)
    positions = tgt_out.flatten().ne(0).nonzero().squeeze(1)
    return Batch(
        pad_sequences(src, None, 3),
        pad_sequences(tgt, 2, None),
        tgt_out,
        positions,
        len(positions),
    )


@pytest.mark.parametrize("attention", KINDS)
def test_fp32_forward_and_backward_equal_the_cpu(attention):
    cpu = _model(attention)
    gpu = copy.deepcopy(cpu).cuda()
    batch = _batch()
    torch.backends.cuda.matmul.allow_tf32 = False  # compare fp32 with fp32
    loss_cpu = batch_loss(cpu, batch, 0.1)
    loss_gpu = batch_loss(gpu, batch.to(torch.device("cuda")), 0.1)
    loss_cpu.backward()
    loss_gpu.backward()
    torch.testing.assert_close(loss_gpu.cpu(), loss_cpu, rtol=1e-5, atol=1e-4)
    for (name, p_cpu), p_gpu in zip(cpu.named_parameters(), gpu.parameters()):
        torch.testing.assert_close(p_gpu.grad.cpu(), p_cpu.grad, rtol=1e-3, atol=1e-5, msg=name)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("attention", KINDS)
def test_autocast_losses_are_close_to_fp32(attention, precision):
    model = _model(attention).cuda()
    batch = _batch().to(torch.device("cuda"))
    with torch.no_grad():
        fp32 = batch_loss(model, batch).item()
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        with torch.autocast("cuda", dtype=dtype):
            low = batch_loss(model, batch).item()
    assert low == pytest.approx(fp32, rel=2e-2)


def test_fp16_loss_scaling_skips_and_counts_an_overflow(tmp_path, small_corpus):
    recipe = config.from_dict(
        tiny_recipe(small_corpus, tmp_path / "run", train={"precision": "fp16", "device": "cuda"})
    )
    preprocess(recipe)
    prepared = Prepared.open(recipe.prepared_dir)
    model = initial_model(recipe, prepared).cuda()
    trainer = Trainer(model, recipe.train, torch.device("cuda"), "fp16")
    batch = collate(prepared.dataset("train"), list(range(16)))
    assert trainer.update([batch], lr=1e-3).skipped is None
    weights = [p.detach().clone() for p in model.parameters()]
    scale = trainer.scaler.get_scale()
    # An overflow: one layer's fp16 output pushed past fp16's largest value (65504).
    hook = model.decoder_layers[0].ff.fc2.register_forward_hook(lambda m, i, out: out * 1e6)
    update = trainer.update([batch], lr=1e-3)
    hook.remove()
    assert update.skipped == "nonfinite"
    assert trainer.scaler.get_scale() < scale
    assert all(torch.equal(a, b) for a, b in zip(weights, model.parameters()))
    assert trainer.update([batch], lr=1e-3).skipped is None  # the next one is applied
    assert not all(torch.equal(a, b) for a, b in zip(weights, model.parameters()))


def test_fused_attention_kernels_are_used():
    """Multi-head attention runs with the math kernel forbidden: flash or memory-efficient
    attention took it."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    model = _model("multihead").cuda().half()
    batch = _batch().to(torch.device("cuda"))
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]):
        with torch.no_grad():
            out = model(batch.src, batch.tgt_in)
    assert torch.isfinite(out).all()


def test_a_gpu_process_runs_attention_without_cudnn():
    """cuDNN's attention builds a plan per batch shape (hundreds of ms each): resolving the
    GPU turns it off, and a bf16 update then runs flash or memory-efficient kernels."""
    from torch.profiler import ProfilerActivity, profile

    from nmt.utils.device import autocast, resolve_device

    device = resolve_device("cuda")
    assert not torch.backends.cuda.cudnn_sdp_enabled()
    model = _model("multihead").to(device)
    batch = _batch().to(device)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        with autocast(device, "bf16"):
            loss = batch_loss(model, batch, 0.1)
        loss.backward()
    ops = {e.key for e in prof.key_averages()}
    assert not any("cudnn_attention" in op for op in ops), sorted(ops)
    assert any("flash" in op or "efficient_attention" in op for op in ops), sorted(ops)


def test_beam_search_on_the_gpu_gives_the_cpu_translations(trained_run):
    lines = [
        "The dog saw the cat.",
        "A girl ran near the red house.",
        "",
        "The boy laughed.",
        "The old man saw a small dog near the house.",
    ]
    cpu = Translator.load(trained_run, device="cpu").translate(lines)
    gpu = Translator.load(trained_run, device="cuda", precision="fp32").translate(lines)
    assert gpu == cpu


def test_int8_on_the_gpu_is_refused_with_one_line(trained_run):
    result = nmt("translate", trained_run, "--device", "cuda", "--quantize", "int8", input="a\n")
    assert_user_error(result, "int8")
