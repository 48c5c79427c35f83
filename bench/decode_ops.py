"""Single operations of a decoding step, timed in their alternatives: the measurements behind
the choices in nmt/models/attention.py (docs/experiments/decoding.md, "Decoding: the two open findings").

    OMP_NUM_THREADS=1 python bench/decode_ops.py --rows 320,1500 --threads 1

Each pair runs interleaved (A, B, A, B, ...) so that a busy machine slows both alike; the median
of --calls calls is printed with the ratio and the largest difference between their results.
Shapes are those of beam search with one new query per row: rows = sentences x beam, 4 heads of
32 (d_model 128), --keys source or target positions.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
import torch.nn.functional as F


def _ms(fn) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def compare(name: str, a, b, calls: int, same: bool = True, warmup: int = 5) -> None:
    """Times a against b, interleaved; `same`: they compute the same values, so print how far
    apart those are."""
    for _ in range(warmup):
        a(), b()
    ta, tb = [], []
    for _ in range(calls):
        ta.append(_ms(a))
        tb.append(_ms(b))
    ma, mb = statistics.median(ta), statistics.median(tb)
    line = f"{name:58s} {ma:8.3f} ms {mb:8.3f} ms  A/B {ma / mb:5.2f}"
    if same:
        line += f"  max |A-B| {(a().float() - b().float()).abs().max().item():.1e}"
    print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--rows", default="320,1500", help="rows (sentences x beam), comma-separated"
    )
    parser.add_argument("--keys", type=int, default=20, help="key positions")
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=32)
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    H, D, S = args.heads, args.head_dim, args.keys
    print(f"# torch {torch.__version__}, {args.threads} thread(s), {H} heads x {D}, {S} keys")
    print(f"# {'A against B':56s} {'A':>11s} {'B':>11s}")
    w_a = torch.randn(H, D, D)
    for rows in map(int, args.rows.split(",")):
        _compare_at(rows, w_a, S, args.calls)


def _compare_at(rows: int, w_a: torch.Tensor, S: int, calls: int) -> None:
    H, D = w_a.shape[0], w_a.shape[1]
    q = torch.randn(rows, H, 1, D)
    compare(
        f"rows {rows}: W_a by broadcast matmul / by einsum",
        lambda: q @ w_a,
        lambda: torch.einsum("bhld,hde->bhle", q, w_a),
        calls,
    )
    # Cross-attention keys/values as the projection leaves them: strided views per head.
    kv = torch.randn(rows, S, 2 * H * D)
    k, v = (t.view(rows, S, H, D).transpose(1, 2) for t in kv.chunk(2, -1))
    kc, vc = k.contiguous(), v.contiguous()
    mask = torch.rand(rows, 1, 1, S) > 0.1
    compare(
        f"rows {rows}: SDPA over strided / contiguous keys, values",
        lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask),
        lambda: F.scaled_dot_product_attention(q, kc, vc, attn_mask=mask),
        calls,
    )

    def written_out():
        scores = (q @ kc.transpose(-1, -2)) / math.sqrt(D)
        return scores.masked_fill(~mask, float("-inf")).softmax(-1) @ vc

    compare(
        f"rows {rows}: one query, SDPA / written out",
        lambda: F.scaled_dot_product_attention(q, kc, vc, attn_mask=mask),
        written_out,
        calls,
    )


if __name__ == "__main__":
    main()
