"""Recipe levers judged on the validation set: many short trainings at once on one GPU.

    PYTHONPATH=. python bench/gpu_sweep.py --out $OUT --steps 5000 --jobs 6 --budget 420
    python bench/gpu_sweep.py --smoke --out /tmp/sweep        # here: on the CPU, toy data, tiny

A CPU run of a Multi30k recipe takes a core for 2 h 10 min, so each lever tried there costs an
afternoon; on a GPU the same model trains in minutes, and several variants share the card as
separate processes (a model this small leaves most of the GPU idle). Each variant is the recipe
with a few overrides (VARIANTS), trained to --steps updates with the decay ending there
(train.max_time off; --steps should be about what the CPU run reaches, so the verdicts carry
over), in bf16. Reported per variant: best and averaged greedy validation BLEU, the step of the
best, wall seconds. The test set is never read: settings are chosen on validation. The seed
variants give the spread that a difference must exceed to mean anything.

`report.json`, `report.md` and `sweep.tsv` go into --out; a variant cut off by --budget reports
the validations it reached.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_check import MULTI30K, RECIPE, ROOT, toy_multi30k  # noqa: E402

# Subword sampling with the lower dropout it needs (sampling is regularisation too).
SAMPLED = ["train.subword_alpha=0.3", "model.dropout=0.2"]

# name -> recipe overrides. Levers that cost the CPU no time per update come first (they can
# be adopted by the CPU recipes at no cost); then the ones that change the step's cost.
VARIANTS = {
    "baseline": [],
    "seed2": ["seed=2"],
    "seed3": ["seed=3"],
    "vocab4k": ["tokenizer.vocab_size=4000"],
    "vocab2k": ["tokenizer.vocab_size=2000"],
    "dropout0.2": ["model.dropout=0.2"],
    "dropout0.4": ["model.dropout=0.4"],
    "smoothing0.2": ["train.label_smoothing=0.2"],
    "lr3e-3": ["train.lr=0.003"],
    "lr8e-3": ["train.lr=0.008"],
    "warmup1000": ["train.warmup_steps=1000"],
    "average10": ["train.average_last=10"],
    "layers3": ["model.encoder_layers=3", "model.decoder_layers=3"],
    "ff512": ["model.ff_dim=512"],
    "d192": ["model.d_model=192", "model.ff_dim=384"],
    "batch8k": ["train.max_tokens=8192"],
    "vocab12k": ["tokenizer.vocab_size=12000"],
    "vocab16k": ["tokenizer.vocab_size=16000"],
    "postnorm": ["model.norm=post"],
    # subword regularisation: each epoch's pairs segmented anew (unigram sampling)
    "alpha0.5": ["train.subword_alpha=0.5"],
    "alpha0.3": ["train.subword_alpha=0.3"],
    "alpha0.2": ["train.subword_alpha=0.2"],
    "alpha0.3seed2": ["train.subword_alpha=0.3", "seed=2"],
    "alpha0.3dropout0.2": SAMPLED,
    "alpha0.3dropout0.2seed2": [*SAMPLED, "seed=2"],
    "alpha0.5dropout0.2": ["train.subword_alpha=0.5", "model.dropout=0.2"],
    "alpha0.3dropout0.1": ["train.subword_alpha=0.3", "model.dropout=0.1"],
    "vocab16k_alpha0.3dropout0.2": ["tokenizer.vocab_size=16000", *SAMPLED],
    "vocab16k_alpha0.3dropout0.2seed2": ["tokenizer.vocab_size=16000", *SAMPLED, "seed=2"],
    "vocab16k_alpha0.5dropout0.2": [
        "tokenizer.vocab_size=16000",
        "train.subword_alpha=0.5",
        "model.dropout=0.2",
    ],
}
SMOKE_VARIANTS = {"baseline": [], "dropout0.1": ["model.dropout=0.1"]}


def run_variant(
    name: str, overrides: list[str], common: list[str], recipe: Path, work: Path, deadline: float
) -> dict:
    """Preprocess and train one variant in processes of their own, stopped at `deadline`."""
    run_dir = work / name
    sets = [f"run_dir={run_dir}", *common, *overrides]
    args = [a for s in sets for a in ("--set", s)]
    nmt = [sys.executable, "-m", "nmt", "-q"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    started = time.perf_counter()
    status = "ok"
    for step in (["preprocess", str(recipe), *args, "--force"], ["train", str(recipe), *args]):
        if step[0] == "train":
            step += ["--force", "--no-progress"]
        child = subprocess.Popen(
            [*nmt, *step],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            start_new_session=True,  # so that the deadline stops it with what it started
        )
        try:
            _, stderr = child.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.communicate(timeout=30)
            status = "out of time"
            break
        if child.returncode != 0:
            status = f"nmt {step[0]} failed: {stderr.strip().splitlines()[-1] if stderr else ''}"
            break
    return {"variant": name, "overrides": overrides, "status": status} | _results(
        run_dir, time.perf_counter() - started
    )


def _results(run_dir: Path, seconds: float) -> dict:
    from nmt.training import runlog

    log = runlog.read(run_dir)
    valid = [r for r in log if r["kind"] == "valid"]
    end = next((r for r in reversed(log) if r["kind"] == "end"), None)
    best = max(valid, key=lambda r: r["valid_bleu"], default=None)
    averaged = end.get("averaged_bleu") if end else None
    return {
        "wall_seconds": seconds,
        "steps": end["steps"] if end else (valid[-1]["step"] if valid else 0),
        "best_valid_bleu": best["valid_bleu"] if best else None,
        "best_step": best["step"] if best else None,
        "averaged_valid_bleu": averaged,
        "tgt_tokens_per_s": end["tokens_per_second"] if end else None,
        "curve": [(r["step"], round(r["valid_bleu"], 2)) for r in valid],
    }


def sweep(variants: dict, recipe: Path, common: list[str], work: Path, jobs: int, budget: float):
    """Every variant, `jobs` at a time, all stopped at the budget; rows in VARIANTS' order."""
    deadline = time.monotonic() + budget
    rows: dict[str, dict] = {}
    slots = threading.Semaphore(jobs)

    def one(name: str, overrides: list[str]) -> None:
        with slots:
            if time.monotonic() > deadline - 5:
                rows[name] = {"variant": name, "overrides": overrides, "status": "not started"}
                return
            rows[name] = run_variant(name, overrides, common, recipe, work, deadline)
            print(f"{name}: {rows[name]['status']}, best val {rows[name]['best_valid_bleu']}")

    threads = [threading.Thread(target=one, args=item) for item in variants.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [rows[name] for name in variants]


def markdown(rows: list[dict], header: str) -> str:
    lines = [
        header,
        "",
        "| variant | overrides | steps | best val BLEU (step) | averaged | "
        "wall s | tgt tok/s | status |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        best = r.get("best_valid_bleu")
        avg = r.get("averaged_valid_bleu")
        rate = r.get("tgt_tokens_per_s")
        lines.append(
            f"| {r['variant']} | {' '.join(r['overrides']) or '-'} | {r.get('steps', 0)} | "
            + (f"{best:.2f} ({r['best_step']})" if best is not None else "-")
            + f" | {f'{avg:.2f}' if avg is not None else '-'} | "
            + f"{r.get('wall_seconds', 0):.0f} | {f'{rate:,.0f}' if rate else '-'} | "
            + f"{r['status']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", nargs="?", default=str(RECIPE))
    parser.add_argument("--out", required=True, help="where report.json, report.md, sweep.tsv go")
    parser.add_argument("--steps", type=int, default=5000, help="updates per variant")
    parser.add_argument("--jobs", type=int, default=6, help="variants training at once")
    parser.add_argument("--budget", type=float, default=420.0, help="seconds for the whole sweep")
    parser.add_argument("--variants", help="comma-separated subset of the variants")
    parser.add_argument("--smoke", action="store_true", help="on the CPU, toy data, tiny")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="for every variant"
    )
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="nmt_sweep_"))
    if args.smoke:
        _, common = toy_multi30k(work)
        common += ["train.precision=fp32", "train.threads=1"]
        variants = SMOKE_VARIANTS
        steps = 20
    else:
        if not (MULTI30K / "train.en").is_file():
            sys.exit(f"no Multi30k in {MULTI30K}: python data/fetch_multi30k.py first")
        common, variants, steps = ["train.precision=bf16"], VARIANTS, args.steps
    if args.variants:
        unknown = set(args.variants.split(",")) - set(variants)
        if unknown:
            sys.exit(
                f"unknown variants: {', '.join(sorted(unknown))}; known: {', '.join(variants)}"
            )
        variants = {k: v for k, v in variants.items() if k in args.variants.split(",")}
    common += [*args.set, "train.max_time=null", f"train.max_steps={steps}"]
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    rows = sweep(variants, Path(args.recipe), common, work, args.jobs, args.budget)
    report = {"started": started, "recipe": args.recipe, "common": common, "rows": rows}
    (out / "report.json").write_text(json.dumps(report, indent=2))
    header = f"# Sweep of {Path(args.recipe).name}, {started}: {steps} updates, {args.jobs} at once"
    if args.set:
        header += f"; for all: {' '.join(args.set)}"
    (out / "report.md").write_text(markdown(rows, header))
    with (out / "sweep.tsv").open("w") as f:
        f.write("variant\tsteps\tbest_val\tbest_step\taveraged_val\twall_s\tstatus\n")
        for r in rows:
            f.write(
                f"{r['variant']}\t{r.get('steps', 0)}\t{r.get('best_valid_bleu')}\t"
                f"{r.get('best_step')}\t{r.get('averaged_valid_bleu')}\t"
                f"{r.get('wall_seconds', 0):.0f}\t{r['status']}\n"
            )
    print(markdown(rows, header))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
