"""Dynamic int8 quantization for CPU inference (`nmt translate --quantize int8`).

Weights of the linear layers (attention projections, feed-forward, the output projection onto
the vocabulary) and of the recurrent layers (GRU, LSTM) are stored as int8 with one scale per
output row; activations are quantized on the fly, batch by batch, and the products run in int8
kernels (fbgemm / oneDNN on x86, qnnpack on ARM). Embeddings, layer norms and the attention
products stay in fp32. Every projection is an `nn.Linear` module of its own (the tied output
projection too), so quantization replaces modules and the models need no hooks for it.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from nmt.errors import NmtError

QUANTIZE_CHOICES = ("none", "int8")


def quantize_int8(model: nn.Module) -> nn.Module:
    """Quantize a model (or an ensemble) for CPU inference, in place; returns it. Not for
    training."""
    if next(model.parameters()).device.type != "cpu":
        raise NmtError("--quantize int8 runs on the CPU; use --device cpu")
    if not torch.backends.quantized.supported_engines:
        raise NmtError("this PyTorch build has no int8 kernels; translate without --quantize")
    model.eval()
    with warnings.catch_warnings():
        # torch.ao.quantization warns that it moves to torchao; the eager API still works.
        warnings.simplefilter("ignore")
        torch.ao.quantization.quantize_dynamic(
            model,
            dict.fromkeys(
                (nn.Linear, nn.GRU, nn.LSTM), torch.ao.quantization.per_channel_dynamic_qconfig
            ),
            dtype=torch.qint8,
            inplace=True,
        )
    return model
