"""Bahdanau's additive scores on the CPU, timed in their alternatives: the measurements behind
`_AdditiveScores` in nmt/models/attention.py (docs/experiments/attention.md, "Bahdanau's additive scores").

    OMP_NUM_THREADS=1 python bench/additive_ops.py --rows 4480 --keys 18 [--compile]

Each pair runs interleaved (A, B, A, B, ...) so that a busy machine slows both alike; the median
of --calls calls is printed with the ratio and the largest difference between their results
(`compare` of bench/decode_ops.py). --compile also times the same scores written as one
expression and compiled by torch.compile (dynamic shapes), which can fuse the sum over features
with the sigmoid instead of writing out every (query, key, feature) value; it prints the time
the first compilation took and that of a second batch shape.
Shapes are those of a training step's cross-attention: rows = sentences x target positions
(split into --batch sentences), 4 heads of 32 (d_model 128), --keys source positions.
"""

from __future__ import annotations

import argparse
import functools
import time

import decode_ops
import torch

from nmt.models.attention import _AdditiveScores
from nmt.utils.device import reuse_freed_memory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=4480, help="query positions in all")
    parser.add_argument("--batch", type=int, default=160, help="sentences")
    parser.add_argument("--keys", type=int, default=18, help="key positions")
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=32)
    parser.add_argument("--calls", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile's fusion")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    reuse_freed_memory()  # as `nmt train` does: large blocks are reused, not faulted in again
    torch.manual_seed(0)
    B, H, D, S = args.batch, args.heads, args.head_dim, args.keys
    L = args.rows // B
    print(f"# torch {torch.__version__}, {args.threads} thread(s), {B} x {L} queries, {S} keys,")
    print(f"# {H} heads x {D}: {B * H * L * S * D / 1e6:.1f}M (query, key, feature) values")
    print(f"# {'A against B':56s} {'A':>11s} {'B':>11s}")
    # Two warm-up calls: the heap grows to its peak once.
    compare = functools.partial(decode_ops.compare, calls=args.calls, warmup=2)

    x = torch.randn(B, H, L, S, D)
    out = torch.empty_like(x)
    compare(
        "tanh(x) / sigmoid(x), one pass each",
        lambda: torch.tanh(x, out=out),
        lambda: torch.sigmoid(x, out=out),
        same=False,
    )
    compare(
        "tanh(x) / 2 sigmoid(2x) - 1 (the same values)",
        lambda: torch.tanh(x),
        lambda: torch.sigmoid(x * 2).mul_(2).sub_(1),
    )

    q = torch.randn(B, H, L, D, requires_grad=True)
    k = torch.randn(B, H, S, D, requires_grad=True)
    v = torch.randn(H, D, requires_grad=True)
    grad = torch.randn(B, H, L, S)
    step = max(1, (1 << 24) // (B * H * S * D))  # BahdanauAttention's chunk of 64 MiB

    def autograd_tanh():
        scores = (torch.tanh(q.unsqueeze(3) + k.unsqueeze(2)) @ v.view(1, H, 1, D, 1))[..., 0]
        return _grads(scores)

    def additive_scores():
        return _grads(_AdditiveScores.apply(q, k, v, step))

    def _grads(scores):
        q.grad = k.grad = v.grad = None
        scores.backward(grad)
        return torch.cat([scores.detach().flatten(), q.grad.flatten(), k.grad.flatten()])

    compare(
        "scores forward + backward: autograd tanh / _AdditiveScores",
        autograd_tanh,
        additive_scores,
    )
    if not args.compile:
        return

    def expression(q, k, v):  # _AdditiveScores' sigmoid form, left for the compiler to fuse
        gate = torch.sigmoid((q * 2).unsqueeze(3) + (k * 2).unsqueeze(2))
        return (gate * (v * 2)[:, None, None, :]).sum(-1) - v.sum(1)[:, None, None]

    compiled = torch.compile(expression, dynamic=True)
    start = time.perf_counter()
    _grads(compiled(q, k, v))
    print(f"# torch.compile: first call (compiling) {time.perf_counter() - start:.1f} s")
    compare(
        "scores forward + backward: _AdditiveScores / torch.compile",
        additive_scores,
        lambda: _grads(compiled(q, k, v)),
    )
    other_q = torch.randn(B + 7, H, L + 3, D, requires_grad=True)
    other_k = torch.randn(B + 7, H, S + 2, D, requires_grad=True)
    start = time.perf_counter()
    compiled(other_q, other_k, v).sum().backward()
    print(f"# torch.compile: another batch shape {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
