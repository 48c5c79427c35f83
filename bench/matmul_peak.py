"""The CPU's own matrix-multiply rate, the anchor that training and decoding speeds are compared
with: GFLOP/s of an N×N by N×N product in fp32 and bf16, median of several runs, per thread
count.

    python bench/matmul_peak.py --size 1024 --threads 1,2
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch


def rate(size: int, dtype: torch.dtype, repeats: int) -> float:
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    a @ b  # warm-up: thread pool, kernel choice
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        seconds.append(time.perf_counter() - start)
    return 2 * size**3 / statistics.median(seconds) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    print(
        f"# {time.strftime('%Y-%m-%d %H:%M')} {platform.processor() or platform.machine()}, "
        f"torch {torch.__version__}, {args.size}x{args.size} products, median of {args.repeats}"
    )
    for threads in (int(t) for t in args.threads.split(",")):
        torch.set_num_threads(threads)
        for dtype in (torch.float32, torch.bfloat16):
            # bf16 without native instructions is emulated and slow: fewer repeats suffice.
            repeats = args.repeats if dtype == torch.float32 else max(1, args.repeats // 3)
            gflops = rate(args.size, dtype, repeats)
            print(f"threads {threads} {str(dtype).removeprefix('torch.')}: {gflops:.1f} GFLOP/s")


if __name__ == "__main__":
    main()
