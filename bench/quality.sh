#!/usr/bin/env bash
# Reproduce the quality table of docs/BENCHMARKS.md: for each recipe, preprocess, train with a
# step budget, translate the test set with beam search and score it (BLEU, chrF, lowercased BLEU).
#
#   bash bench/quality.sh [--steps N] [--out DIR] [--translate-only] RECIPE...
#
# --steps N         stops training after N updates (default: the recipe's own max_steps);
# --out DIR         puts each run in DIR/<recipe name> (default: runs/quality) and appends one
#                   tab-separated row per recipe to DIR/quality.tsv;
# --translate-only  skips preprocessing and training: translates and scores runs already in
#                   DIR (training time then comes from the run's log).
# Needs the data first: python data/fetch_multi30k.py --from ../shared/data/multi30k
set -euo pipefail

steps=""
out=runs/quality
translate_only=""
recipes=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --steps) steps="$2"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        --translate-only) translate_only=1; shift ;;
        -h|--help) sed -n 2,12p "$0"; exit 0 ;;
        *) recipes+=("$1"); shift ;;
    esac
done
[[ ${#recipes[@]} -gt 0 ]] || { echo "usage: bash bench/quality.sh [--steps N] [--out DIR] RECIPE..." >&2; exit 2; }

mkdir -p "$out"
table="$out/quality.tsv"
[[ -f "$table" ]] || printf 'recipe\tparams\tsteps\ttrain_s\ttgt_tok_per_s\tbest_val_bleu\ttest\tbleu\tchrf\tbleu_lc\tdevice\tdate\n' > "$table"

for recipe in "${recipes[@]}"; do
    name=$(basename "$recipe" .yaml)
    run="$out/$name"
    sets=(--set "run_dir=$run")
    [[ -n "$steps" ]] && sets+=(--set "train.max_steps=$steps")
    train_s=""  # wall time of `nmt train`; from the log's end record with --translate-only
    if [[ -z "$translate_only" ]]; then
        nmt preprocess "$recipe" "${sets[@]}" --force
        start=$(date +%s.%N)
        nmt train "$recipe" "${sets[@]}" --no-progress
        end=$(date +%s.%N)
        train_s=$(python -c "print($end-$start)")
    fi
    test_prefix=$(python - "$run/recipe.yaml" <<'EOF'
import sys
from nmt import config
r = config.load(sys.argv[1])
print(r.data.test or "")
print(r.data.src_lang, r.data.tgt_lang)
EOF
)
    read -r test_path <<<"$(sed -n 1p <<<"$test_prefix")"
    read -r src tgt <<<"$(sed -n 2p <<<"$test_prefix")"
    nmt translate "$run" -i "$test_path.$src" -o "$run/test.hyp"
    python - "$run" "$test_path.$tgt" "$name" "$train_s" >> "$table" <<'EOF'
import datetime, json, sys
from pathlib import Path
from nmt.score import score_lines
run, ref, name = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
logs = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
steps = max(r.get("step", 0) for r in logs)
val = [r["valid_bleu"] for r in logs if "valid_bleu" in r]
end = [r for r in logs if r.get("kind") == "end"]
train_s = float(sys.argv[4]) if sys.argv[4] else end[-1]["seconds"]
params = next((r["parameters"] for r in logs if "parameters" in r), "")
device = next((r["device"] for r in logs if "device" in r), "")
hyp = (run / "test.hyp").read_text(encoding="utf-8").splitlines()
refs = [Path(ref).read_text(encoding="utf-8").splitlines()]
s = {r.name: r.score for r in score_lines(hyp, refs, ["bleu", "chrf"])}
lc = score_lines(hyp, refs, ["bleu"], lowercase=True)[0].score
rate = f"{end[-1]['tokens_per_second']:.0f}" if end else ""  # over the whole run
print(
    f"{name}\t{params}\t{steps}\t{train_s:.0f}\t{rate}\t{max(val) if val else ''}\t{ref}"
    f"\t{s['BLEU']:.2f}\t{s['chrF2']:.2f}\t{lc:.2f}\t{device}\t{datetime.date.today()}"
)
EOF
    tail -1 "$table"
done
