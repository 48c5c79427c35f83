#!/usr/bin/env bash
# A recipe end to end, timed, as its header reports it: preprocess, train (with its averaging),
# tune the beam size and length penalty on the validation set, translate the test set, score it
# (BLEU, chrF, lowercased BLEU against the raw references). One tab-separated row per recipe.
#
#   bash bench/quality.sh [--out DIR] [--set KEY=VALUE]... [--ensemble N] [--translate-only] RECIPE...
#
# --out DIR         puts each run in DIR/<recipe name> (default: runs/quality) and appends one
#                   row per recipe to DIR/quality.tsv;
# --set KEY=VALUE   a recipe override for every stage (repeatable), e.g. train.max_steps=1000;
# --ensemble N      trains N seeds (1..N) of each recipe at the same time, one thread each pinned
#                   to its own core, on one shared vocabulary (DIR/<name>/prepared, runs in
#                   DIR/<name>/seed<k>), then tunes and translates the N models as one ensemble;
# --translate-only  skips preprocessing and training: tunes, translates and scores runs already
#                   in DIR (training time then comes from the run's log).
# Needs the data first: python data/fetch_multi30k.py --from ../shared/data/multi30k
set -euo pipefail

out=runs/quality
translate_only=""
ensemble=1
sets=()
recipes=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --out) out="$2"; shift 2 ;;
        --set) sets+=(--set "$2"); shift 2 ;;
        --ensemble) ensemble="$2"; shift 2 ;;
        --translate-only) translate_only=1; shift ;;
        -h|--help) sed -n 2,16p "$0"; exit 0 ;;
        *) recipes+=("$1"); shift ;;
    esac
done
[[ ${#recipes[@]} -gt 0 ]] || { echo "usage: bash bench/quality.sh [--out DIR] [--set K=V]... RECIPE..." >&2; exit 2; }

mkdir -p "$out"
table="$out/quality.tsv"
[[ -f "$table" ]] || printf 'recipe\tparams\tsteps\tepochs\twall_s\ttrain_s\ttune_s\ttranslate_s\ttgt_tok_per_s\tbest_val_bleu\taveraged_val_bleu\tselected\tbeam\tlength_penalty\ttuned_val_bleu\tbleu\tchrf\tbleu_lc\tdevice\tdate\n' > "$table"

now() { date +%s.%N; }
cores=$(nproc)
for recipe in "${recipes[@]}"; do
    name=$(basename "$recipe" .yaml)
    run="$out/$name"
    members=("$run")
    label=$name
    run_sets=("${sets[@]}")
    if (( ensemble > 1 )); then
        members=()
        for ((k = 1; k <= ensemble; k++)); do members+=("$run/seed$k"); done
        label="$name x$ensemble"
        run_sets=(--set "data.prepared_dir=$run/prepared" --set train.threads=1 "${sets[@]}")
    fi
    begin=$(now)
    train_s=""  # wall time of `nmt train`; from the log's end record with --translate-only
    if [[ -z "$translate_only" ]]; then
        nmt preprocess "$recipe" --set "run_dir=${members[0]}" "${run_sets[@]}" --force
        start=$(now)
        if (( ensemble > 1 )); then
            pids=()
            for ((k = 1; k <= ensemble; k++)); do
                pin=()
                command -v taskset > /dev/null && pin=(taskset -c $(((k - 1) % cores)))
                OMP_NUM_THREADS=1 "${pin[@]}" nmt train "$recipe" --set "run_dir=$run/seed$k" \
                    --set "seed=$k" "${run_sets[@]}" --no-progress > "$run/seed$k.train.log" 2>&1 &
                pids+=($!)
            done
            for pid in "${pids[@]}"; do wait "$pid"; done  # set -e: a failed member stops here
        else
            nmt train "$recipe" --set "run_dir=$run" "${run_sets[@]}" --no-progress
        fi
        train_s=$(python -c "print($(now)-$start)")
    fi
    start=$(now)
    nmt tune "${members[@]}"
    tune_s=$(python -c "print($(now)-$start)")
    read -r test_path src tgt < <(python - "${members[0]}/recipe.yaml" <<'EOF'
import sys
from nmt import config
r = config.load(sys.argv[1])
print(r.data.test or "", r.data.src_lang, r.data.tgt_lang)
EOF
)
    start=$(now)
    nmt translate "${members[@]}" -i "$test_path.$src" -o "$run/test.hyp"
    translate_s=$(python -c "print($(now)-$start)")
    wall_s=$(python -c "print($(now)-$begin)")
    python - "$run" "${members[0]}" "$test_path.$tgt" "$label" "$wall_s" "$train_s" "$tune_s" "$translate_s" >> "$table" <<'EOF'
import datetime, json, sys
from pathlib import Path
from nmt import runlog
from nmt.utils.files import read_lines
from nmt.score import score_lines
# With an ensemble the steps, speed and validation figures are the first member's.
run, first, ref, name = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4]
wall_s, train_s, tune_s, translate_s = sys.argv[5:9]
logs = runlog.read(first)
end = [r for r in logs if r["kind"] == "end"][-1]
train_s = float(train_s) if train_s else end["seconds"]
params = next((r["parameters"] for r in logs if "parameters" in r), "")
device = next((r["device"] for r in logs if "device" in r), "")
tuned = json.loads((first / "tune.json").read_text())["chosen"]
hyp = [line.rstrip() for line in read_lines(run / "test.hyp")]
refs = [[line.rstrip() for line in read_lines(Path(ref))]]
s = {r.name: r.score for r in score_lines(hyp, refs, ["bleu", "chrf"])}
lc = score_lines(hyp, refs, ["bleu"], lowercase=True)[0].score
averaged = end.get("averaged_bleu")
print(
    f"{name}\t{params}\t{end['steps']}\t{end['epochs']}\t{float(wall_s):.0f}\t{train_s:.0f}"
    f"\t{float(tune_s):.0f}\t{float(translate_s):.0f}\t{end['tokens_per_second']:.0f}"
    f"\t{end['best_bleu']:.2f}\t{'' if averaged is None else f'{averaged:.2f}'}"
    f"\t{end.get('selected') or 'best.pt'}\t{tuned['beam_size']}\t{tuned['length_penalty']}"
    f"\t{tuned['bleu']:.2f}\t{s['BLEU']:.2f}\t{s['chrF2']:.2f}\t{lc:.2f}\t{device}"
    f"\t{datetime.date.today()}"
)
EOF
    tail -1 "$table"
done
