"""Arithmetic of a training step: FLOPs per target token of a recipe's model, counted by
PyTorch's FlopCounterMode over the forward and backward passes of real batches, and the
GFLOP/s a run achieved (its target tokens/s from `bench/quality.sh`'s table) against a peak.

    python bench/flops.py recipes/multi30k_en_de.yaml --batches 4
    python bench/flops.py RECIPE... --table runs/quality.tsv --peak 75.2

Counted: matrix products and attention (the operations FlopCounterMode knows), forward and
backward; not counted: elementwise work (softmax, tanh, layer norm, dropout, the optimizer),
which Bahdanau attention has more of than the others. Needs the recipe's preprocessed data.
"""

from __future__ import annotations

import argparse
import csv
import tempfile

import torch
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

aten = torch.ops.aten


def _cpu_attention(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_flop_count(query, key, value)


def _cpu_attention_backward(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_backward_flop_count(grad_out, query, key, value)


# PyTorch's counter knows the GPU attention kernels but not the CPU's fused one, which training
# on the CPU runs: without these, its attention would count as zero.
CPU_ATTENTION = {
    aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention,
    aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_attention_backward,
}


def flops_per_target_token(recipe_path: str, batches: int, overrides: list[str]) -> dict:
    from nmt import config
    from nmt.training.distributed import World
    from nmt.training.loss import batch_loss
    from nmt.training.run import Run

    with tempfile.TemporaryDirectory() as run_dir:
        prepared = config.load(recipe_path, overrides).prepared_dir
        recipe = config.load(
            recipe_path, overrides + [f"run_dir={run_dir}", f"data.prepared_dir={prepared}"]
        )
        run = Run.start(recipe, torch.device("cpu"), World(), force=True)
        model = run.trainer.model
        model.train()
        groups = (g for g in run.epoch_updates(1))
        flops = tokens = 0
        for _ in range(batches):
            for batch in next(groups):
                counter = FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION)
                with counter:
                    batch_loss(model, batch, recipe.train.label_smoothing).backward()
                flops += counter.get_total_flops()
                tokens += batch.n_tgt_tokens
        model.zero_grad(set_to_none=True)
        return {
            "recipe": recipe.name,
            "parameters": sum(p.numel() for p in model.parameters()),
            "mflop_per_target_token": flops / tokens / 1e6,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipes", nargs="+")
    parser.add_argument("--batches", type=int, default=4, help="updates counted per recipe")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--table", help="bench/quality.sh's quality.tsv: adds achieved GFLOP/s")
    parser.add_argument("--peak", type=float, default=75.2, help="GFLOP/s of one core (fp32)")
    args = parser.parse_args()
    rates = {}
    if args.table:
        with open(args.table) as f:
            for row in csv.DictReader(f, delimiter="\t"):
                rates[row["recipe"]] = float(row["tgt_tok_per_s"])  # the latest row wins
    print("| recipe | parameters | MFLOP per target token | target tokens/s | GFLOP/s | of peak |")
    print("| --- | --- | --- | --- | --- | --- |")
    for path in args.recipes:
        r = flops_per_target_token(path, args.batches, args.overrides)
        rate = rates.get(r["recipe"])
        achieved = r["mflop_per_target_token"] * rate / 1e3 if rate else None
        print(
            f"| {r['recipe']} | {r['parameters'] / 1e6:.2f}M | {r['mflop_per_target_token']:.1f} | "
            + (
                f"{rate:,.0f} | {achieved:.1f} | {achieved / args.peak:.0%} |"
                if rate
                else "– | – | – |"
            )
        )


if __name__ == "__main__":
    main()
