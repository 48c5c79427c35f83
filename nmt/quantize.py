"""Dynamic int8 quantization for CPU inference (`nmt translate --quantize int8`).

Weights of the linear layers (attention projections, feed-forward, the output projection onto
the vocabulary) are stored as int8 with one scale per output row; activations are quantized on
the fly, batch by batch, and the products run in int8 kernels (fbgemm / oneDNN on x86, qnnpack
on ARM). Embeddings, layer norms and the attention products stay in fp32.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from nmt.attention import Attention
from nmt.errors import NmtError
from nmt.model import Ensemble, Seq2Seq

QUANTIZE_CHOICES = ("none", "int8")


def _float_linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        linear.weight.copy_(weight)
        if bias is not None:
            linear.bias.copy_(bias)
    return linear


def quantize_int8(model: Seq2Seq | Ensemble) -> Seq2Seq | Ensemble:
    """Quantize a model for CPU inference, in place; returns it. Not for training."""
    if next(model.parameters()).device.type != "cpu":
        raise NmtError("--quantize int8 runs on the CPU; use --device cpu")
    if not torch.backends.quantized.supported_engines:
        raise NmtError("this PyTorch build has no int8 kernels; translate without --quantize")
    members = model.models if isinstance(model, Ensemble) else [model]
    for member in members:
        # The tied output projection is an F.linear on the embedding matrix, not a module:
        # give it its own copy to quantize (the embedding lookup keeps the fp32 table).
        member.int8_output = _float_linear(member.tgt_embed.weight.detach(), None)
        for module in member.modules():
            if isinstance(module, Attention):
                d = module.d_model
                w, b = module.in_proj.weight.detach(), module.in_proj.bias.detach()
                module.int8_q = _float_linear(w[:d], b[:d])
                module.int8_kv = _float_linear(w[d:], b[d:])
    model.eval()
    with warnings.catch_warnings():
        # torch.ao.quantization warns that it moves to torchao; the eager API still works.
        warnings.simplefilter("ignore")
        torch.ao.quantization.quantize_dynamic(
            model,
            {nn.Linear: torch.ao.quantization.per_channel_dynamic_qconfig},
            dtype=torch.qint8,
            inplace=True,
        )
    return model
