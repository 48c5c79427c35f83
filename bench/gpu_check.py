"""One prepared check of every CUDA path, for the few minutes a GPU is lent.

    PYTHONPATH=. python bench/gpu_check.py --out $OUT          # on the GPU machine (data/multi30k carried)
    python bench/gpu_check.py --smoke --out /tmp/gpu_check     # here: every part, on the CPU, tiny

Parts, in order, each in a process of its own under its own time limit (a part that fails or
runs out of time is recorded, and the next part runs):

    versions     Python, torch, CUDA, the GPU, the packages nmt uses
    data         Multi30k en-de preprocessed with the recipe (shared by the parts below)
    correctness  the CUDA-marked tests (tests/test_cuda.py)
    profile      one update of the recipe's model: ms with batches on the device vs the
                 training loop's path, device-busy ms, the operators that take the host's time
    quality      the Multi30k en-de recipe trained to its end in bf16, translated, scored
    decoding     greedy and beam 5 on test_2016_flickr in fp32, bf16 and fp16
    throughput   training tokens/s, peak memory and model-FLOPs utilisation: Transformer-base
                 and the Multi30k recipe's model, bf16, torch.compile off and on; and the peer,
                 Hugging Face's MarianMT at the same sizes trained by a plain PyTorch loop on
                 the same token batches (needs transformers: carry its wheels, see below)
    nccl         `torchrun --nproc_per_node=1 -m nmt train` through one validation

The peer row needs transformers. The H200 lent on 2026-12-04 had transformers 5.17.0 in the
Python that runs this script (/opt/torch/.venv; the `pip` on its PATH belongs to another
Python). Where it is missing, put its wheels in a git-ignored folder for the device's Python
and carry it, e.g. `pip download -d .wheels transformers safetensors tokenizers` here, then
`python -m pip install --no-index --find-links .wheels transformers` there (without it the
row records the ImportError).

`report.json` and `report.md` go into --out. `--smoke` runs every part on the CPU at tiny
sizes in under a minute (the test suite does, so the check keeps working as the code changes).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "recipes" / "multi30k_en_de.yaml"
MULTI30K = ROOT / "data" / "multi30k"

# Dense bf16 tensor-core peaks (FLOP/s, without sparsity), from NVIDIA's data sheets.
BF16_PEAK = {"H100 PCIe": 756e12, "H100 NVL": 835e12, "H100": 989e12, "H200": 989e12}

# (seconds on the GPU, seconds in --smoke): the limit of each part.
# The GPU limits fit one device call of about 9 minutes; a part out of time keeps what it
# recorded so far (its "partial" rows).
LIMITS = {
    "versions": (45, 30),
    "data": (60, 30),
    "correctness": (90, 60),
    "profile": (60, 60),
    "quality": (360, 90),
    "decoding": (60, 60),
    "throughput": (150, 60),
    "nccl": (60, 60),
}


# -- the parts -----------------------------------------------------------------------------------


def part_versions(ctx: dict) -> dict:
    import torch

    result = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "gpu_memory_gib": (
            round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
            if torch.cuda.is_available()
            else None
        ),
        "cpu_threads": torch.get_num_threads(),
    }
    for name in ("sentencepiece", "sacrebleu", "typer", "yaml", "rich", "matplotlib", "pytest"):
        try:
            result[name] = getattr(__import__(name), "__version__", "present")
        except ImportError:
            result[name] = None
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    )
    result["nmt_commit"] = commit.stdout.strip() or None
    return result


def part_data(ctx: dict) -> dict:
    from nmt import config
    from nmt.data.preprocess import preprocess

    recipe = config.load(ctx["recipe"], ctx["overrides"] + [f"run_dir={ctx['work']}/data"])
    manifest = preprocess(recipe, force=True)
    return {"prepared": str(recipe.prepared_dir), "splits": manifest["splits"]}


def part_correctness(ctx: dict) -> dict:
    # -n 0: one process; a worker per core would each start a CUDA context for six tests.
    cmd = [sys.executable, "-m", "pytest", "-q", "-n", "0", "-m", "cuda", "-p", "no:cacheprovider"]
    out = subprocess.run(
        [*cmd, "tests/test_cuda.py"], cwd=ROOT, capture_output=True, text=True, env=_env()
    )
    summary = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""
    failures = [line for line in out.stdout.splitlines() if line.startswith("FAILED")]
    return {
        "summary": summary,
        "failed": failures,
        "exit_code": out.returncode,
        "ok": out.returncode in (0, 5) and not failures,  # 5: nothing collected/ran
        "tail": out.stdout[-3000:] if failures else "",
    }


BASE = [
    "model.d_model=512",
    "model.ff_dim=2048",
    "model.heads=8",
    "model.encoder_layers=6",
    "model.decoder_layers=6",
    "model.dropout=0.1",
]


def part_profile(ctx: dict) -> dict:
    """Where one update goes, for the recipe's model at its batch size and Transformer-base at
    25k tokens: batches already on the device vs the training loop's own path (collated,
    pinned and copied on a thread), the device's busy time, and the operators that take the
    host's and the device's time (a small model on a GPU is bound by the host launching
    kernels)."""
    configs = {"multi30k_recipe": []}
    if not ctx["smoke"]:
        configs["transformer_base_25k"] = BASE + ["train.max_tokens=25000"]
    compiled = ["train.compile=true", "train.pad_multiple=8"]
    # Compiled variants, the most wanted first (each takes minutes to compile on a GPU; the
    # part keeps what it finished when its time runs out). In --smoke, on the CPU, CUDA graphs
    # would only warn and compile the same step again.
    variants = {"compiled": compiled}
    if not ctx["smoke"]:
        variants = {"cuda_graphs": compiled + ["train.cuda_graphs=true"], **variants}
    result: dict = {}
    for name, overrides in configs.items():  # eager first: compiling is slow to start
        result[name] = _profile(ctx, name, overrides)
        _partial(ctx, "profile", result)
    if not ctx["smoke"]:
        # The peer at the same shape, in the same process, for a side-by-side ratio.
        result["transformer_base_25k_peer"] = _measure_peer(
            ctx, "transformer_base", configs["transformer_base_25k"] + ["train.precision=bf16"], 20
        )
        _partial(ctx, "profile", result)
    # What autocast costs: the largest model with its weights in bf16 itself (no casts, layer
    # norm in bf16), a plain loop; a bound for bf16 weights with fp32 master copies.
    largest = list(configs)[-1]
    result[f"{largest}_pure_bf16"] = _measure_pure_bf16(
        ctx, largest, configs[largest], 3 if ctx["smoke"] else 20
    )
    _partial(ctx, "profile", result)
    for variant, extra in variants.items():
        for name, overrides in configs.items():
            label = f"{name}_{variant}"
            result[label] = _profile(ctx, label, overrides + extra)
            _partial(ctx, "profile", result)
    return result


def _profile(ctx: dict, name: str, overrides: list[str]) -> dict:
    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    from nmt.data.batches import collate

    precision = "fp32" if ctx["smoke"] else "bf16"
    recipe, device, run, updates = _start_run(
        ctx, overrides + [f"train.precision={precision}"], f"profile_{name}"
    )
    trainer, lr = run.trainer, recipe.train.lr
    n = 3 if ctx["smoke"] else 20

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    staged = [[b.to(device) for b in next(updates)] for _ in range(n)]
    started = time.perf_counter()
    # A compiled step meets every shape once before it is timed (the compiler's time is
    # reported apart).
    for group in staged if recipe.train.compile else staged[:3]:
        trainer.update(group, lr)
    sync()
    warm_up_s = time.perf_counter() - started
    result: dict = {
        "max_tokens": recipe.train.max_tokens,
        "updates": n,
        "batches_per_update": statistics.mean(len(g) for g in staged),
        "tgt_tokens_per_update": statistics.mean(sum(b.n_tgt_tokens for b in g) for g in staged),
    }
    for label, source in (("staged", lambda i: staged[i]), ("loop", lambda i: next(updates))):
        times = []
        for _ in range(3):
            sync()
            start = time.perf_counter()
            for i in range(n):
                trainer.update(source(i), lr)
            sync()
            times.append((time.perf_counter() - start) / n)
        result[f"{label}_ms_per_update"] = 1e3 * statistics.median(times)
    result["warm_up_s"] = warm_up_s
    result["tgt_tokens_per_s"] = (
        1e3 * result["tgt_tokens_per_update"] / result["staged_ms_per_update"]
    )
    flops_per_token = _flops_per_token(_our_loss(run, recipe, device), staged[0][0])
    run.model.zero_grad(set_to_none=True)
    result.update(_figures(result["tgt_tokens_per_s"], flops_per_token, device))
    if recipe.train.compile:
        from torch._dynamo.utils import counters

        result["compiled_graphs"] = int(counters["stats"]["unique_graphs"])
        result["compiled"] = trainer.loss_module is not trainer.eager_loss_module
        result["cuda_graphs"] = trainer.cuda_graphs
    start = time.perf_counter()
    groups = [next(updates) for _ in range(n)]
    result["collate_ms_per_update"] = 1e3 * (time.perf_counter() - start) / n
    indices = list(range(min(len(run.train_data), 400)))
    start = time.perf_counter()
    collate(run.train_data, indices)
    result["collate_400_sentences_ms"] = 1e3 * (time.perf_counter() - start)
    del groups
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for group in staged[:5]:
            trainer.update(group, lr)
        sync()
    events = prof.key_averages()

    def row(e) -> dict:
        return {
            "op": e.key,
            "calls_per_update": e.count / 5,
            "self_cpu_ms": e.self_cpu_time_total / 1e3 / 5,
            "device_ms": getattr(e, "self_device_time_total", 0) / 1e3 / 5,
        }

    by_host = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)
    by_device = sorted(
        (e for e in events if e.device_type == DeviceType.CUDA),
        key=lambda e: e.self_device_time_total,
        reverse=True,
    )
    result["top_host_ops"] = [row(e) for e in by_host[:15]]
    result["top_device_ops"] = [row(e) for e in by_device[:15]]
    # Kernels only: an operator's row repeats the time of the kernels it launched.
    kernels = [e for e in events if e.device_type == DeviceType.CUDA]
    result["device_ms_per_update"] = sum(e.self_device_time_total for e in kernels) / 1e3 / 5
    result["device_busy"] = result["device_ms_per_update"] / result["staged_ms_per_update"]
    result["host_ops_per_update"] = sum(e.count for e in events) / 5
    result["kernel_launches_per_update"] = (
        sum(
            e.count
            for e in events
            if e.key in ("cudaLaunchKernel", "cuLaunchKernelEx", "cudaGraphLaunch")
        )
        / 5
    )
    return result


def part_throughput(ctx: dict) -> dict:
    import torch

    smoke = ctx["smoke"]
    if smoke:
        models = {"tiny": ["model.d_model=32", "model.ff_dim=64", "model.heads=2"]}
        sizes, compiles, precision = [1024], [False], "fp32"
    else:
        models = {"transformer_base": BASE, "multi30k_recipe": []}
        sizes, compiles, precision = [8192, 25000], [False, True], "bf16"
    rows = []
    # Eager rows of both models and the peer first: compiling is slow to start, and the part
    # may run out of time.
    for name, model_overrides in models.items():
        for max_tokens in sizes:
            shape = [f"train.max_tokens={max_tokens}", f"train.precision={precision}"]
            rows.append(_measure_training(ctx, name, model_overrides + shape, 3 if smoke else 20))
            _partial(ctx, "throughput", {"rows": rows})
            rows.append(_measure_peer(ctx, name, model_overrides + shape, 3 if smoke else 20))
            _partial(ctx, "throughput", {"rows": rows})
            torch.cuda.empty_cache() if torch.cuda.is_available() else None
    # Compiled rows pad lengths to a multiple of 8 (train.pad_multiple), so the compiler sees
    # few shapes; the largest batches first, as they are the targets.
    for compiled in [c for c in compiles if c]:
        for max_tokens in sorted(sizes, reverse=True):
            for name, model_overrides in models.items():
                rows.append(
                    _measure_training(
                        ctx,
                        name,
                        model_overrides
                        + [
                            f"train.max_tokens={max_tokens}",
                            f"train.precision={precision}",
                            f"train.compile={str(compiled).lower()}",
                            "train.pad_multiple=8",
                        ],
                        steps=3 if smoke else 20,
                    )
                )
                _partial(ctx, "throughput", {"rows": rows})
                torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return {"rows": rows}


def _measure_training(ctx: dict, name: str, overrides: list[str], steps: int) -> dict:
    """Median tokens/s over timed windows of real updates, after warm-up updates."""
    from nmt.models.base import count_parameters

    row = {"model": name, "overrides": overrides}
    try:
        recipe, device, run, updates = _start_run(ctx, overrides, "throughput")
        trainer, lr = run.trainer, recipe.train.lr
        warm = 3 if recipe.train.compile else 2
        for _ in range(warm):
            trainer.update(next(updates), lr)
        # FLOPs of one batch's forward and backward, counted on the model itself.
        flops_per_token = _flops_per_token(_our_loss(run, recipe, device), next(updates)[0])
        run.model.zero_grad(set_to_none=True)
        row.update(
            _timed(lambda: trainer.update(next(updates), lr).tokens, steps, device),
            parameters=count_parameters(run.model),
            precision=trainer.precision,
        )
        row.update(_figures(row["tgt_tokens_per_s"], flops_per_token, device))
        if recipe.train.compile:
            from torch._dynamo.utils import counters

            row["compiled_graphs"] = int(counters["stats"]["unique_graphs"])
    except Exception as e:  # one configuration failing (out of memory, say) is a result
        row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return row


def _measure_peer(ctx: dict, name: str, overrides: list[str], steps: int) -> dict:
    """The peer row: transformers' MarianMTModel with our model's sizes (post-norm, its own
    layout; the same vocabulary, embeddings tied, relu), trained with a plain loop (AdamW,
    fused on CUDA; clipping at 1.0; autocast in the trainer's precision) on the same token
    batches as ours, timed as `_measure_training` times ours."""
    import torch

    from nmt.data.tokenizer import BOS, EOS, PAD
    from nmt.utils.device import autocast

    row = {"model": f"{name} (peer: transformers MarianMT)", "overrides": overrides}
    try:
        from transformers import MarianConfig, MarianMTModel

        recipe, device, run, updates = _start_run(ctx, overrides, "throughput_peer")
        precision = run.trainer.precision
        cfg, vocab = recipe.model, len(run.prepared.tgt_tok)
        run.model.cpu()  # only its batches are needed here
        torch.manual_seed(recipe.seed)
        peer = MarianMTModel(
            MarianConfig(
                vocab_size=vocab,
                decoder_vocab_size=vocab,
                d_model=cfg.d_model,
                encoder_layers=cfg.encoder_layers,
                decoder_layers=cfg.decoder_layers,
                encoder_attention_heads=cfg.heads,
                decoder_attention_heads=cfg.heads,
                encoder_ffn_dim=cfg.ff_dim,
                decoder_ffn_dim=cfg.ff_dim,
                activation_function=cfg.activation,
                dropout=cfg.dropout,
                max_position_embeddings=cfg.max_positions,
                pad_token_id=PAD,
                eos_token_id=EOS,
                decoder_start_token_id=BOS,
                scale_embedding=True,
                share_encoder_decoder_embeddings=True,
            )  # fmt: skip
        ).to(device)
        optimizer = torch.optim.AdamW(
            peer.parameters(), lr=recipe.train.lr, fused=device.type == "cuda"
        )

        def loss_of(batch) -> torch.Tensor:
            batch = batch.to(device)
            labels = batch.tgt_out.masked_fill(batch.tgt_out.eq(PAD), -100)
            with autocast(device, precision):
                out = peer(
                    input_ids=batch.src, attention_mask=batch.src.ne(PAD),
                    decoder_input_ids=batch.tgt_in, labels=labels,
                )  # fmt: skip
            return out.loss * batch.n_tgt_tokens  # summed, as ours

        row.update(
            _plain_loop(loss_of, peer.parameters(), optimizer, updates, steps, device),
            parameters=sum(p.numel() for p in peer.parameters()),
            precision=precision,
        )
    except Exception as e:  # transformers missing, out of memory: a result too
        row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return row


def _measure_pure_bf16(ctx: dict, name: str, overrides: list[str], steps: int) -> dict:
    """Our model and batches with every weight in bf16 (no autocast), trained by a plain loop
    (Adam, fused on CUDA; clipping at 1.0): the speed bf16 weights would give, not a recipe
    (bf16 weights without fp32 master copies lose small updates)."""
    import torch

    from nmt.training.loss import batch_loss

    row: dict = {"model": f"{name} (weights in bf16)", "overrides": overrides}
    try:
        recipe, device, run, updates = _start_run(
            ctx, overrides + ["train.precision=fp32"], "pure_bf16"
        )
        model = run.model.to(torch.bfloat16)
        optimizer = torch.optim.Adam(
            model.parameters(), lr=recipe.train.lr, fused=device.type == "cuda"
        )
        smoothing = recipe.train.label_smoothing
        row.update(
            _plain_loop(
                lambda batch: batch_loss(model, batch.to(device), smoothing),
                model.parameters(),
                optimizer,
                updates,
                steps,
                device,
            ),
            precision="bf16 weights",
        )
    except Exception as e:  # out of memory, an operation without bf16: a result too
        row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return row


def _plain_loop(loss_of, parameters, optimizer, updates, steps: int, device) -> dict:
    """A plain training loop over `updates` (groups of batches): `loss_of(batch)` (summed over
    its target tokens) divided by the update's tokens, backward, clipping at 1.0, `optimizer`.
    Target tokens/s as `_timed` gives them after two warm-up updates, and what they make of the
    card, the FLOPs counted on one batch's forward and backward."""
    import torch

    parameters = list(parameters)

    def update(group) -> int:
        tokens = sum(b.n_tgt_tokens for b in group)
        for batch in group:
            (loss_of(batch) / tokens).backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return tokens

    for _ in range(2):
        update(next(updates))
    flops_per_token = _flops_per_token(loss_of, next(updates)[0])
    optimizer.zero_grad(set_to_none=True)
    row = _timed(lambda: update(next(updates)), steps, device)
    row.update(_figures(row["tgt_tokens_per_s"], flops_per_token, device))
    return row


def _flops_per_token(loss_of, batch) -> float:
    """FLOPs of `loss_of(batch)`'s forward and backward per target token, counted on the model
    itself (the caller clears the gradients)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        loss_of(batch).backward()
    return counter.get_total_flops() / batch.n_tgt_tokens


def _our_loss(run, recipe, device):
    """batch -> nmt's summed loss of it on the device, under the trainer's autocast."""
    from nmt.training.loss import batch_loss
    from nmt.utils.device import autocast

    def loss_of(batch):
        with autocast(device, run.trainer.precision):
            return batch_loss(run.model, batch.to(device), recipe.train.label_smoothing)

    return loss_of


def _start_run(ctx: dict, overrides: list[str], folder: str) -> tuple:
    """The recipe with `overrides` on the prepared data, its device, a started training run in
    `folder` of the work folder, and an endless stream of its updates (groups of batches)."""
    from nmt import config
    from nmt.training.distributed import World
    from nmt.training.run import Run
    from nmt.utils.device import resolve_device

    recipe = config.load(
        ctx["recipe"],
        ctx["overrides"]
        + overrides
        + [f"run_dir={ctx['work']}/{folder}", f"data.prepared_dir={ctx['prepared']}"],
    )
    device = resolve_device("auto")
    run = Run.start(recipe, device, World(), force=True)
    updates = (g for epoch in range(1, 10_000) for g in run.epoch_updates(epoch))
    return recipe, device, run, updates


def _timed(update, steps: int, device) -> dict:
    """Target tokens/s of `update()` (which returns its tokens): the median of three windows
    of `steps` updates, and the peak memory over them."""
    import torch

    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    rates = []
    for _ in range(3):
        tokens, start = 0, time.perf_counter()
        for _ in range(steps):
            tokens += update()
        if cuda:
            torch.cuda.synchronize()
        rates.append(tokens / (time.perf_counter() - start))
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    return {"tgt_tokens_per_s": statistics.median(rates), "windows": rates, "peak_memory_gib": peak}


def _figures(rate: float, flops_per_token: float, device) -> dict:
    """What `rate` target tokens/s make of the card: TFLOP/s and the share of its bf16 peak."""
    peak = _bf16_peak(device)
    achieved = rate * flops_per_token
    return {
        "device": str(device),
        "flops_per_tgt_token": flops_per_token,
        "achieved_tflops": achieved / 1e12,
        "peak_tflops": peak / 1e12 if peak else None,
        "mfu": achieved / peak if peak else None,
    }


def _bf16_peak(device) -> float | None:
    import torch

    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key in sorted(BF16_PEAK, key=len, reverse=True):  # "H100 PCIe" before "H100"
        if key in name:
            return BF16_PEAK[key]
    return None


def part_quality(ctx: dict) -> dict:
    """The recipe trained to the same number of updates its CPU run reached (so the schedule is
    the same), in bf16; then tuned, translated and scored, timed end to end."""
    run_dir = Path(ctx["work"]) / "quality"
    sets = [
        f"run_dir={run_dir}",
        f"data.prepared_dir={ctx['prepared']}",
        "train.max_time=null",
        f"train.max_steps={ctx['quality_steps']}",
        f"train.precision={'fp32' if ctx['smoke'] else 'bf16'}",
    ]
    args = [a for s in ctx["overrides"] + sets for a in ("--set", s)]
    test = ctx["test_prefix"]
    hyp = run_dir / "test.hyp"
    alphas = "1.0" if ctx["smoke"] else "0.6,0.8,1.0,1.2"
    steps = [
        ["train", str(ctx["recipe"]), *args, "--force", "--no-progress"],
        ["tune", str(run_dir), "--beam-size", "5", "--length-penalty", alphas],
        ["translate", str(run_dir), "-i", f"{test}.en", "-o", str(hyp)],
        ["score", str(hyp), "-r", f"{test}.de", "--metrics", "bleu,chrf", "--json"],
        ["score", str(hyp), "-r", f"{test}.de", "--lowercase", "--json"],
    ]
    timings, outputs = {}, {}
    started = time.perf_counter()
    for step in steps:
        t0 = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-m", "nmt", "-q", *step], capture_output=True, text=True, env=_env()
        )
        key = step[0] if step[0] != "score" or "--lowercase" not in step else "score_lc"
        timings[key] = time.perf_counter() - t0
        if out.returncode != 0:
            raise RuntimeError(f"nmt {step[0]} failed: {out.stderr.strip()[-500:]}")
        outputs[key] = out.stdout
        _partial(ctx, "quality", {"seconds": timings, "log": _log_summary(run_dir)})
    scores = {s["name"]: s["score"] for s in json.loads(outputs["score"])}
    from nmt.training import runlog

    end = runlog.read(run_dir, "end")[-1]
    return {
        "wall_seconds": time.perf_counter() - started,
        "seconds": timings,
        "steps": end["steps"],
        "best_valid_bleu": end["best_bleu"],
        "averaged_valid_bleu": end.get("averaged_bleu"),
        "selected": end.get("selected"),
        "tgt_tokens_per_s": end["tokens_per_second"],
        "test_bleu": scores.get("BLEU"),
        "test_chrf": scores.get("chrF2"),
        "test_bleu_lc": json.loads(outputs["score_lc"])[0]["score"],
        "target_bleu_from_cpu": ctx.get("cpu_bleu"),
    }


def part_decoding(ctx: dict) -> dict:
    import torch

    from nmt.decoding.translator import Translator
    from nmt.utils.files import read_lines

    run_dir = Path(ctx["work"]) / "quality"
    if not (run_dir / "best.pt").is_file():
        return {"skipped": "no trained model (the quality part did not finish)"}
    lines = list(read_lines(Path(f"{ctx['test_prefix']}.en")))
    if ctx["smoke"]:
        lines = lines[:8]
    cuda = torch.cuda.is_available()
    precisions = ["fp32", "bf16", "fp16"] if cuda else ["fp32"]
    rows = []
    for precision in precisions:
        for method in ("greedy", "beam"):
            for batch in ("64 sentences", "default tokens"):
                overrides = {"method": method, "beam_size": 5}
                if batch == "64 sentences":
                    overrides.update(batch_size=64, batch_tokens=1_000_000)
                translator = Translator.load(run_dir, precision=precision, **overrides)
                translator.translate(lines[:64])  # warm-up
                if cuda:
                    torch.cuda.synchronize()
                start = time.perf_counter()
                outputs = translator.translate(lines)
                if cuda:
                    torch.cuda.synchronize()
                seconds = time.perf_counter() - start
                tokens = sum(len(ids) + 1 for ids in translator.tgt_tok.encode(outputs))
                rows.append(
                    {
                        "precision": precision,
                        "search": "greedy" if method == "greedy" else "beam 5",
                        "batch": batch,
                        "sentences_per_s": len(lines) / seconds,
                        "tgt_tokens_per_s": tokens / seconds,
                    }
                )
    return {"sentences": len(lines), "rows": rows}


def part_nccl(ctx: dict) -> dict:
    import torch

    work = Path(ctx["work"]) / "nccl"
    toy = work / "toy"
    subprocess.run(
        [sys.executable, str(ROOT / "data" / "make_toy.py"), "--out", str(toy), "--train", "2000"],
        check=True,
        capture_output=True,
    )
    sets = [
        f"run_dir={work / 'run'}",
        f"data.train={toy / 'train'}",
        f"data.valid={toy / 'valid'}",
        "train.max_steps=6",
        "train.valid_every=6",
        # A small model: this part proves the NCCL path starts and finishes, nothing more.
        "model.d_model=32",
        "model.ff_dim=64",
        "model.heads=2",
        "tokenizer.vocab_size=150",
    ]
    args = [a for s in sets for a in ("--set", s)]
    recipe = ROOT / "recipes" / "quickstart.yaml"
    nmt = [sys.executable, "-m", "nmt", "-q"]
    subprocess.run([*nmt, "preprocess", str(recipe), *args], check=True, env=_env())
    started = time.perf_counter()
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=1",
            "-m",
            "nmt",
            "-q",
            "train",
            str(recipe),
            *args,
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        env=_env(),
    )
    from nmt.training import runlog

    log = runlog.read(work / "run")
    return {
        "backend": "nccl" if torch.cuda.is_available() else "gloo",
        "exit_code": out.returncode,
        "seconds": time.perf_counter() - started,
        "validations": sum(r["kind"] == "valid" for r in log),
        "ok": out.returncode == 0 and any(r["kind"] == "valid" for r in log),
        "stderr_tail": out.stderr[-1500:] if out.returncode else "",
    }


PARTS = {
    "versions": part_versions,
    "data": part_data,
    "correctness": part_correctness,
    "profile": part_profile,
    "quality": part_quality,
    "decoding": part_decoding,
    "throughput": part_throughput,
    "nccl": part_nccl,
}


def _partial(ctx: dict, name: str, result: dict) -> None:
    """What a part has measured so far, kept if it runs out of time."""
    (Path(ctx["work"]) / f"part_{name}.partial.json").write_text(json.dumps(result, default=str))


def _log_summary(run_dir: Path) -> dict:
    """The training log's last validation and its end record, if any."""
    from nmt.training import runlog

    log = runlog.read(run_dir)
    if not log:
        return {}
    valid = [r for r in log if r["kind"] == "valid"]
    steps = [r for r in log if r["kind"] == "train"]
    return {
        "last_valid": valid[-1] if valid else None,
        "validations": len(valid),
        "last_train": steps[-1] if steps else None,
    }


# -- running the parts -----------------------------------------------------------------------


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}


def toy_multi30k(work: Path) -> tuple[Path, list[str]]:
    """For --smoke: the toy corpus under Multi30k's file names (so every part runs the same
    code), and the recipe overrides that shrink the model and the run to seconds."""
    toy = work / "toy"
    if not toy.is_dir():
        make_toy = [sys.executable, str(ROOT / "data" / "make_toy.py"), "--out", str(toy)]
        sizes = ["--train", "2000", "--valid", "16", "--test", "16"]
        subprocess.run([*make_toy, *sizes], check=True, capture_output=True)
    for split, name in (("train", "train"), ("valid", "val"), ("test", "test_2016_flickr")):
        for lang in ("en", "de"):
            dst = toy / f"{name}.{lang}"
            if not dst.exists():
                shutil.copyfile(toy / f"{split}.{lang}", dst)
    overrides = [
        f"data.train={toy / 'train'}",
        f"data.valid={toy / 'val'}",
        "tokenizer.vocab_size=150",
        "model.d_model=32",
        "model.ff_dim=64",
        "model.heads=2",
        "model.encoder_layers=1",
        "model.decoder_layers=1",
        "train.valid_every=10",
        "train.average_last=2",
        "decode.max_len_b=5",
        "train.threads=2",
    ]
    return toy, overrides


def _context(args: argparse.Namespace, work: Path) -> dict:
    smoke = args.smoke
    data_dir, overrides = toy_multi30k(work) if smoke else (MULTI30K, [])
    return {
        "smoke": smoke,
        "work": str(work),
        "recipe": str(RECIPE),
        "overrides": overrides,
        "prepared": str(work / "data" / "prepared"),
        "test_prefix": str(data_dir / "test_2016_flickr"),
        "quality_steps": args.quality_steps if not smoke else 20,
        "cpu_bleu": args.cpu_bleu,
    }


def _run_part(name: str, args: argparse.Namespace, work: Path, limit: float) -> dict:
    cmd = [sys.executable, __file__, "--part", name, "--work", str(work)]
    cmd += ["--quality-steps", str(args.quality_steps)]
    if args.cpu_bleu is not None:
        cmd += ["--cpu-bleu", str(args.cpu_bleu)]
    if args.smoke:
        cmd.append("--smoke")
    started = time.perf_counter()
    # A session of its own, so that a part out of time is stopped with everything it started.
    child = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        start_new_session=True,
    )
    try:
        _, stderr = child.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        _, stderr = child.communicate(timeout=30)
        partial = work / f"part_{name}.partial.json"
        return {
            "status": "timeout",
            "seconds": time.perf_counter() - started,
            "limit": limit,
            "partial": json.loads(partial.read_text()) if partial.is_file() else None,
            # A training cut short still tells its pace and its last validation.
            "log": _log_summary(work / name) or None,
            "stderr_tail": (stderr or "")[-1500:],
        }
    result_file = work / f"part_{name}.json"
    record = {"seconds": time.perf_counter() - started, "limit": limit}
    if child.returncode == 0 and result_file.is_file():
        result = json.loads(result_file.read_text())
        record["result"] = result
        failed = (
            result.get("ok") is False
            or result.get("error")
            or any("error" in row for row in result.get("rows", []))
        )
        record["status"] = "skipped" if "skipped" in result else "failed" if failed else "ok"
    else:
        record["status"] = "error"
        record["stderr_tail"] = stderr[-3000:]
    return record


def _child(args: argparse.Namespace) -> None:
    work = Path(args.work)
    ctx = _context(args, work)
    result = PARTS[args.part](ctx)
    (work / f"part_{args.part}.json").write_text(json.dumps(result, indent=2, default=str))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="where report.json and report.md go")
    parser.add_argument("--smoke", action="store_true", help="every part on the CPU, tiny")
    parser.add_argument("--parts", default=",".join(PARTS), help="comma-separated subset")
    parser.add_argument(
        "--budget", type=float, default=480.0, help="seconds for the whole check (default 480)"
    )
    parser.add_argument(
        "--quality-steps",
        type=int,
        default=6000,
        help="updates for the quality part: the number the recipe's CPU run reached",
    )
    parser.add_argument("--cpu-bleu", type=float, help="the recipe's test BLEU on the CPU")
    parser.add_argument(
        "--slack", type=float, default=1.0, help="multiply every part's time limit (busy machines)"
    )
    parser.add_argument("--part", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.part:
        try:
            _child(args)
        except Exception:
            traceback.print_exc()
            sys.exit(1)
        return
    if not args.out:
        parser.error("--out DIR is required")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="nmt_gpu_check_"))
    started = time.perf_counter()
    report: dict = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "smoke": args.smoke}
    report["parts"] = {}
    for name in args.parts.split(","):
        limit = LIMITS[name][1 if args.smoke else 0] * args.slack
        left = args.budget - (time.perf_counter() - started)
        if left < 10:
            report["parts"][name] = {"status": "skipped", "reason": "the budget is spent"}
            continue
        record = _run_part(name, args, work, min(limit, left))
        report["parts"][name] = record
        print(f"{name}: {record['status']} in {record['seconds']:.0f}s", flush=True)
        _write(out, report, time.perf_counter() - started)
    _write(out, report, time.perf_counter() - started)
    shutil.rmtree(work, ignore_errors=True)


def _write(out: Path, report: dict, seconds: float) -> None:
    report["seconds"] = seconds
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str))
    (out / "report.md").write_text(_markdown(report))


def _result(parts: dict, name: str) -> dict | None:
    record = parts.get(name, {})
    return record.get("result") or record.get("partial")


def _markdown(report: dict) -> str:
    lines = [f"# GPU check, {report['started']}" + (" (smoke, CPU)" if report["smoke"] else "")]
    lines.append(f"\nWall time {report.get('seconds', 0):.0f} s.\n")
    parts = report["parts"]
    lines.append("| part | status | seconds |\n| --- | --- | --- |")
    for name, record in parts.items():
        lines.append(f"| {name} | {record['status']} | {record.get('seconds', 0):.0f} |")
    versions = _result(parts, "versions")
    if versions:
        lines.append("\n## Versions\n")
        lines += [f"- {k}: {v}" for k, v in versions.items()]
    profile = _result(parts, "profile")
    if profile:
        lines.append("\n## One update, profiled\n")
        lines.append(
            "| model | tokens/update | ms (staged) | ms (loop) | device ms | device busy "
            "| host ops | kernel launches | tgt tok/s | MFU | warm-up s |"
        )
        lines.append("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for name, r in profile.items():
            if not isinstance(r, dict) or "staged_ms_per_update" not in r:
                detail = r.get("error") if isinstance(r, dict) else r
                if isinstance(r, dict) and "tgt_tokens_per_s" in r:
                    detail = f"{r['tgt_tokens_per_s']:,.0f} tgt tok/s, MFU {r.get('mfu')}"
                lines.append(f"| {name} | {detail} |")
                continue
            mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") else "-"
            lines.append(
                f"| {name} | {r['tgt_tokens_per_update']:,.0f} | {r['staged_ms_per_update']:.1f} "
                f"| {r['loop_ms_per_update']:.1f} | {r['device_ms_per_update']:.1f} "
                f"| {100 * r['device_busy']:.0f}% | {r['host_ops_per_update']:,.0f} "
                f"| {r['kernel_launches_per_update']:,.0f} | {r['tgt_tokens_per_s']:,.0f} "
                f"| {mfu} | {r['warm_up_s']:.0f} |"
            )
    throughput = _result(parts, "throughput")
    if throughput:
        lines.append("\n## Training throughput\n")
        lines.append(
            "| model | settings | params | tgt tok/s | FLOP/token | TFLOP/s | MFU | peak GiB |"
        )
        lines.append("| --- | --- | --- | --- | --- | --- | --- | --- |")
        for r in throughput["rows"]:
            if "error" in r:
                lines.append(f"| {r['model']} | {' '.join(r['overrides'][-3:])} | {r['error']} |")
                continue
            mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") else "-"
            mem = f"{r['peak_memory_gib']:.1f}" if r.get("peak_memory_gib") else "-"
            lines.append(
                f"| {r['model']} | {' '.join(r['overrides'][-3:])} | {r['parameters']:,} | "
                f"{r['tgt_tokens_per_s']:,.0f} | {r['flops_per_tgt_token'] / 1e6:.1f} M | "
                f"{r['achieved_tflops']:.2f} | {mfu} | {mem} |"
            )
    quality = _result(parts, "quality")
    if quality:
        lines.append("\n## Time to quality\n")
        lines += [f"- {k}: {v}" for k, v in quality.items()]
    decoding = _result(parts, "decoding")
    if decoding and "rows" in decoding:
        lines.append(f"\n## Decoding ({decoding['sentences']} sentences)\n")
        lines.append("| precision | search | batch | sentences/s | tgt tokens/s |")
        lines.append("| --- | --- | --- | --- | --- |")
        for r in decoding["rows"]:
            lines.append(
                f"| {r['precision']} | {r['search']} | {r['batch']} | "
                f"{r['sentences_per_s']:,.1f} | {r['tgt_tokens_per_s']:,.0f} |"
            )
    for name, record in parts.items():
        if record["status"] != "ok":
            detail = record.get("stderr_tail") or json.dumps(record.get("result", {}))[:1500]
            lines.append(f"\n## {name}: {record['status']}\n\n```\n{detail}\n```")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
