#!/usr/bin/env bash
# Training speed of nmt and JoeyNMT 2.3.0 side by side, on the same machine, model and data:
# the Transformer of recipes/multi30k_en_de.yaml (its layers, sizes, heads, norm and dropout;
# tied embeddings, 4096-token batches, fp32), the same SentencePiece model and vocabulary for both. With
# --model rnn_bahdanau or rnn_luong: the RNN of recipes/multi30k_en_de_<model>.yaml against
# JoeyNMT's recurrent model of the same sizes (embedding size, bidirectional encoder of
# hidden_size / 2 per direction, decoder of hidden_size, layers, cell, dropout). JoeyNMT's
# recurrent decoder is Luong-style for both of its attentions (query: the new state; input
# feeding of tanh(W [h; c])), so against rnn_bahdanau the sizes match, not the equations.
#
#   bash bench/compare_joeynmt.sh [--model transformer|rnn_bahdanau|rnn_luong] [--updates N]
#                                 [--joey-python PATH] [--prepared DIR]
#
# JoeyNMT goes in its own virtual environment (it pins protobuf and pulls many packages):
#   python -m venv /tmp/joey && /tmp/joey/bin/pip install torch==2.13.0 joeynmt==2.3.0 \
#       importlib_metadata sentencepiece==0.1.99   (joeynmt 2.3.0 needs both, and does not declare them)
# Needs `nmt preprocess recipes/multi30k_en_de.yaml` first (for the SentencePiece model).
# Prints JoeyNMT's median "Tokens per Sec" (target tokens, logged every 10 updates) and nmt's
# median target tokens/s (bench/train_speed.py), then their ratio.
set -euo pipefail
updates=60
joey=/tmp/joey/bin/python
model=transformer
root=$(cd "$(dirname "$0")/.." && pwd)
prepared=$root/runs/multi30k_en_de/prepared
while [[ $# -gt 0 ]]; do
    case "$1" in
        --model) model="$2"; shift 2 ;;
        --updates) updates="$2"; shift 2 ;;
        --joey-python) joey="$2"; shift 2 ;;
        --prepared) prepared=$(cd "$2" && pwd); shift 2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
[[ -f $prepared/spm.model ]] || { echo "run nmt preprocess recipes/multi30k_en_de.yaml first" >&2; exit 2; }
case "$model" in
    transformer) recipe=$root/recipes/multi30k_en_de.yaml ;;
    rnn_bahdanau|rnn_luong) recipe=$root/recipes/multi30k_en_de_$model.yaml ;;
    *) echo "unknown --model $model (transformer, rnn_bahdanau or rnn_luong)" >&2; exit 2 ;;
esac
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# JoeyNMT's vocabulary file: SentencePiece's pieces without its four special symbols (JoeyNMT
# adds its own <unk> <pad> <s> </s> in front).
cut -f1 "${prepared}/spm.vocab" | tail -n +5 > "$work/vocab.txt"
side() {
    cat <<YAML
        lang: "$1"
        level: "bpe"
        lowercase: false
        normalize: false
        max_length: 100
        voc_min_freq: 1
        voc_file: "$work/vocab.txt"
        tokenizer_type: "sentencepiece"
        tokenizer_cfg:
            model_file: "$prepared/spm.model"
YAML
}
model_block() {
    # The sizes come from the recipe nmt trains, so the two sides always build the same model.
    local arch E H F heads enc dec cell attention dropout norm tied=false
    read -r arch E H F heads enc dec cell attention dropout norm < <(python - "$recipe" <<'PY'
import sys
from nmt import config
m = config.load(sys.argv[1]).model
print(m.arch, m.d_model, m.hidden_size, m.ff_dim, m.heads, m.encoder_layers, m.decoder_layers,
      m.rnn_type, m.attention, m.dropout, m.norm)
PY
)
    if [[ $arch == transformer ]]; then
        local layer
        for layer in encoder decoder; do
            local n=$enc
            [[ $layer == decoder ]] && n=$dec
            cat <<YAML
    $layer:
        type: "transformer"
        num_layers: $n
        num_heads: $heads
        embeddings: {embedding_dim: $E, scale: true, dropout: 0.0}
        hidden_size: $E
        ff_size: $F
        dropout: $dropout
        layer_norm: "$norm"
YAML
        done | { printf 'model:\n    initializer: "xavier_uniform"\n    embed_initializer: "xavier_uniform"\n    tied_embeddings: true\n    tied_softmax: true\n'; cat; }
        return
    fi
    # JoeyNMT ties its output layer only to an embedding of the decoder's hidden size.
    [[ $E == "$H" ]] && tied=true
    cat <<YAML
model:
    initializer: "xavier_uniform"
    embed_initializer: "xavier_uniform"
    tied_embeddings: true
    tied_softmax: $tied
    encoder:
        type: "recurrent"
        rnn_type: "$cell"
        embeddings: {embedding_dim: $E, scale: false, dropout: $dropout}
        hidden_size: $((H / 2))
        bidirectional: true
        dropout: $dropout
        num_layers: $enc
    decoder:
        type: "recurrent"
        rnn_type: "$cell"
        embeddings: {embedding_dim: $E, scale: false, dropout: $dropout}
        hidden_size: $H
        dropout: $dropout
        hidden_dropout: $dropout
        num_layers: $dec
        attention: "$attention"
        input_feeding: true
        init_hidden: "bridge"
YAML
}
cat > "$work/joey.yaml" <<YAML
name: "multi30k_en_de_speed"
joeynmt_version: "2.3.0"
data:
    train: "$root/data/multi30k/train"
    dev: "$root/data/multi30k/val"
    dataset_type: "plain"
    src:
$(side en)
    trg:
$(side de)
training:
    random_seed: 1
    optimizer: "adam"
    normalization: "tokens"
    adam_betas: [0.9, 0.98]
    scheduling: "warmupinversesquareroot"
    learning_rate_warmup: 1000
    learning_rate: 0.001
    learning_rate_min: 1.0e-8
    label_smoothing: 0.1
    clip_grad_norm: 1.0
    batch_size: 4096
    batch_type: "token"
    epochs: 100
    updates: $updates
    validation_freq: 1000000
    logging_freq: 10
    early_stopping_metric: "bleu"
    model_dir: "$work/model"
    overwrite: true
    shuffle: true
    use_cuda: false
    fp16: false
    keep_best_ckpts: 1
testing:
    beam_size: 1
    eval_metrics: ["bleu"]
$(model_block)
YAML

echo "# $(date -u '+%Y-%m-%d %H:%M') $(nproc) CPUs; $model; JoeyNMT: $updates updates, then nmt"
"$joey" -m joeynmt train "$work/joey.yaml" --skip-test > "$work/joey.log" 2>&1 || {
    tail -30 "$work/joey.log" >&2; exit 1; }
grep -o "Tokens per Sec: *[0-9]*" "$work/joey.log" | awk '{print $4}' > "$work/joey.rates"
grep -m1 -o "Total params: *[0-9]*" "$work/joey.log" || true
joey_rate=$(tail -n +2 "$work/joey.rates" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
echo "joeynmt: median $joey_rate target tokens/s over $(($(wc -l < "$work/joey.rates") - 1)) windows of 10 updates (first left out): $(tr '\n' ' ' < "$work/joey.rates")"

windows=$(( (updates - 10) / 10 ))
python "$root/bench/train_speed.py" "$recipe" \
    --set "data.prepared_dir=$prepared" --steps 10 --windows "$windows" | tee "$work/nmt.log"
nmt_rate=$(python - "$work/nmt.log" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.startswith("{")]
print(round(rows[0]["tgt_tokens_per_s"]))
PY
)
echo "nmt: median $nmt_rate target tokens/s; nmt / joeynmt = $(python -c "print(round($nmt_rate / $joey_rate, 2))")"
