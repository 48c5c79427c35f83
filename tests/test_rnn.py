"""RNN encoder-decoders (nmt/models/rnn.py): Bahdanau and Luong attention as first published.

Every variant is checked against a float64 implementation written here from the papers'
equations (and PyTorch's documented GRU / LSTM cells), with the module's own weights, one
sentence at a time and unpadded, while the model runs a padded batch. Then: incremental decoding
through the search interface (with beam-style reorders) against teacher forcing, invariance to
source padding, the searches, ensembles, int8, the recipe keys, and a short training run
through checkpoints, averaging, exact resume and translation with n-best and alignments. The
learning tests (marked slow) train each attention kind on the toy corpus.
"""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from conftest import tiny_recipe
from test_learning import THRESHOLD
from test_model import VOCAB, log_probs, random_batch, rescore, target_in
from test_resume import step_losses

from nmt import config
from nmt.config import DecodeConfig, ModelConfig
from nmt.data.preprocess import preprocess
from nmt.data.tokenizer import EOS, PAD
from nmt.decoding.search import beam_search, greedy_search
from nmt.decoding.translator import Translator
from nmt.errors import NmtError
from nmt.models.builder import build_model
from nmt.models.ensemble import Ensemble
from nmt.models.quantize import quantize_int8
from nmt.score import score_lines
from nmt.training import loop as train
from nmt.utils import files

ATOL = 1e-5

VARIANTS = {
    "bahdanau_gru": {"attention": "bahdanau", "rnn_type": "gru", "decoder_layers": 1},
    "bahdanau_lstm": {"attention": "bahdanau", "rnn_type": "lstm", "encoder_layers": 1},
    # d_model = hidden_size: the output projection is the embedding (tied).
    "luong_dot_lstm": {
        "attention": "luong",
        "luong_score": "dot",
        "rnn_type": "lstm",
        "d_model": 8,
    },
    "luong_general_gru": {"attention": "luong", "luong_score": "general", "rnn_type": "gru"},
    "luong_concat_lstm": {"attention": "luong", "luong_score": "concat", "rnn_type": "lstm"},
    "luong_general_no_feeding": {
        "attention": "luong",
        "luong_score": "general",
        "rnn_type": "gru",
        "input_feeding": False,
    },
}


def rnn_config(**values) -> ModelConfig:
    settings = {
        "arch": "rnn",
        "d_model": 6,
        "hidden_size": 8,
        "encoder_layers": 2,
        "decoder_layers": 2,
        "dropout": 0.3,  # eval() must turn it off for the comparisons to hold
        **values,
    }
    cfg = ModelConfig(**settings)
    cfg.validate()
    return cfg


def make_model(variant: str, seed: int = 0, eos_scale: float = 1.0):
    """A tiny model in eval mode; attention's v is scaled up so the weights are far from
    uniform."""
    torch.manual_seed(seed)
    model = build_model(rnn_config(**VARIANTS[variant]), VOCAB, VOCAB, share_all=True)
    with torch.no_grad():
        attention = model.decoder.attention
        if hasattr(attention, "v"):
            attention.v.mul_(5.0)
        model.output_projection.weight[EOS] *= eos_scale
    return model.eval()


# ----------------------------------------------------------------------------------------------
# The float64 reference, written from the equations.


def param(module: torch.nn.Module, name: str) -> torch.Tensor:
    return getattr(module, name).detach().double()


def gru_cell(x, state, w_ih, w_hh, b_ih, b_hh):
    """PyTorch's GRU (the reset gate applied after W_hn h, as cuDNN has it):
    r = σ(W_ir x + b_ir + W_hr h + b_hr),  z = σ(W_iz x + b_iz + W_hz h + b_hz),
    n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn)),  h' = (1 − z) ⊙ n + z ⊙ h."""
    (h,) = state
    w_ir, w_iz, w_in = w_ih.chunk(3)
    w_hr, w_hz, w_hn = w_hh.chunk(3)
    b_ir, b_iz, b_in = b_ih.chunk(3)
    b_hr, b_hz, b_hn = b_hh.chunk(3)
    r = torch.sigmoid(w_ir @ x + b_ir + w_hr @ h + b_hr)
    z = torch.sigmoid(w_iz @ x + b_iz + w_hz @ h + b_hz)
    n = torch.tanh(w_in @ x + b_in + r * (w_hn @ h + b_hn))
    return ((1 - z) * n + z * h,)


def lstm_cell(x, state, w_ih, w_hh, b_ih, b_hh):
    """i, f, o = σ(W_i· x + b_i· + W_h· h + b_h·), g = tanh(...), c' = f ⊙ c + i ⊙ g,
    h' = o ⊙ tanh(c')."""
    h, c = state
    i, f, g, o = (w_ih @ x + b_ih + w_hh @ h + b_hh).chunk(4)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def run_cell(kind: str, rnn: torch.nn.Module, layer: int, suffix: str, x, state):
    weights = [param(rnn, f"{n}_l{layer}{suffix}") for n in ("weight_ih", "weight_hh")]
    biases = [param(rnn, f"{n}_l{layer}{suffix}") for n in ("bias_ih", "bias_hh")]
    return (gru_cell if kind == "gru" else lstm_cell)(x, state, *weights, *biases)


def reference_encoder(model, tokens: list[int]):
    """The bidirectional encoder over one unpadded sentence: h_j = [→h_j; ←h_j] of the top layer
    (n, H), and each layer's final states ([→h_n; ←h_1], and for an LSTM [→c_n; ←c_1])."""
    cfg, rnn = model.cfg, model.encoder
    x = param(model.src_embed, "weight")[tokens]
    half = cfg.hidden_size // 2
    n_states = 1 if cfg.rnn_type == "gru" else 2
    finals = []
    for layer in range(cfg.encoder_layers):
        outputs, last = [], []
        for suffix, positions in (
            ("", range(len(tokens))),
            ("_reverse", reversed(range(len(tokens)))),
        ):
            state = tuple(torch.zeros(half, dtype=torch.float64) for _ in range(n_states))
            seq = [None] * len(tokens)
            for j in positions:
                state = run_cell(cfg.rnn_type, rnn, layer, suffix, x[j], state)
                seq[j] = state[0]
            outputs.append(torch.stack(seq))
            last.append(state)
        x = torch.cat(outputs, dim=-1)
        finals.append(tuple(torch.cat([f, b]) for f, b in zip(*last)))
    return x, finals


def masked_softmax(scores: torch.Tensor) -> torch.Tensor:
    e = torch.exp(scores - scores.max())
    return e / e.sum()


def reference_decoder(model, tokens: list[int], tgt_in: list[int]):
    """Log-probabilities (T, V) and attention weights (T, n) of teacher-forced decoding."""
    cfg, dec = model.cfg, model.decoder
    H = cfg.hidden_size
    memory, finals = reference_encoder(model, tokens)
    E = param(model.tgt_embed, "weight")
    W_out = param(model.output_projection, "weight")
    layers = cfg.decoder_layers
    lstm = cfg.rnn_type == "lstm"
    if cfg.attention == "bahdanau":
        # s_0 = tanh(W_s ←h_1): ←h_1 is the second half of the top layer's final state.
        s0 = torch.tanh(param(dec.init_state, "weight") @ finals[-1][0][H // 2 :])
        states = [
            (s0[layer * H : (layer + 1) * H],)
            + ((torch.zeros(H, dtype=torch.float64),) if lstm else ())
            for layer in range(layers)
        ]
    else:
        states = list(finals)  # decoder layer l starts from encoder layer l
    feed = torch.zeros(H, dtype=torch.float64)  # h̃_0
    attn = dec.attention
    all_lp, all_alpha = [], []
    for y in tgt_in:
        if cfg.attention == "bahdanau":
            # e_j = vᵀ tanh(W s_{i-1} + U h_j)
            W, U, v = param(attn.query, "weight"), param(attn.key, "weight"), param(attn, "v")
            e = torch.stack([v @ torch.tanh(W @ states[-1][0] + U @ h_j) for h_j in memory])
            alpha = masked_softmax(e)
            c = alpha @ memory
            x = torch.cat([E[y], c])
            for layer in range(layers):
                states[layer] = run_cell(cfg.rnn_type, dec.rnn, layer, "", x, states[layer])
                x = states[layer][0]
            s = x
            # t̃ = U_o s_i + C_o c_i + V_o E y_{i-1} + b_o; maxout over pairs; W_o = E.
            t_tilde = param(dec.maxout, "weight") @ torch.cat([s, c, E[y]]) + param(
                dec.maxout, "bias"
            )
            t = torch.stack(
                [max(t_tilde[2 * k], t_tilde[2 * k + 1]) for k in range(len(t_tilde) // 2)]
            )
            logits = W_out @ t
        else:
            x = torch.cat([E[y], feed]) if cfg.input_feeding else E[y]
            for layer in range(layers):
                states[layer] = run_cell(cfg.rnn_type, dec.rnn, layer, "", x, states[layer])
                x = states[layer][0]
            h_t = x
            if cfg.luong_score == "dot":  # h_tᵀ h̄_s
                e = torch.stack([h_t @ h_s for h_s in memory])
            elif cfg.luong_score == "general":  # h_tᵀ W_a h̄_s
                W_a = param(attn.key, "weight")
                e = torch.stack([h_t @ W_a @ h_s for h_s in memory])
            else:  # v_aᵀ tanh(W_a [h_t; h̄_s])
                W_a = torch.cat([param(attn.query, "weight"), param(attn.key, "weight")], dim=1)
                v_a = param(attn, "v")
                e = torch.stack([v_a @ torch.tanh(W_a @ torch.cat([h_t, h_s])) for h_s in memory])
            alpha = masked_softmax(e)
            c = alpha @ memory
            feed = torch.tanh(param(dec.combine, "weight") @ torch.cat([c, h_t]))  # h̃_t
            logits = W_out @ feed
        all_lp.append(torch.log_softmax(logits, dim=-1))
        all_alpha.append(alpha)
    return torch.stack(all_lp), torch.stack(all_alpha)


@pytest.mark.parametrize("variant", VARIANTS)
def test_matches_float64_reference_from_the_papers(variant):
    """Teacher-forced log-probabilities and attention weights of a padded batch (plus a padding
    column no sentence needs) against the reference, sentence by sentence, unpadded."""
    model = make_model(variant, seed=1)
    torch.manual_seed(1)
    lengths = [5, 2, 4]
    src, tgt = random_batch(lengths, width=6), target_in(3, 4)
    lp = log_probs(model, src, tgt)
    with torch.no_grad():
        weights = model.cross_attention(src, tgt)
    assert lp.shape == (3, 4, VOCAB) and weights.shape == (3, 4, 6)
    for row, n in enumerate(lengths):
        ref_lp, ref_alpha = reference_decoder(model, src[row, :n].tolist(), tgt[row].tolist())
        torch.testing.assert_close(lp[row].double(), ref_lp, atol=ATOL, rtol=1e-5)
        torch.testing.assert_close(weights[row, :, :n].double(), ref_alpha, atol=ATOL, rtol=1e-5)
        assert torch.all(weights[row, :, n:] == 0)  # padded positions get exactly nothing


def test_output_projection_is_tied_where_the_sizes_allow():
    bahdanau = make_model("bahdanau_gru")  # the maxout emits d_model values: always tied
    assert bahdanau.output_projection.weight is bahdanau.tgt_embed.weight
    assert bahdanau.src_embed is bahdanau.tgt_embed
    tied = make_model("luong_dot_lstm")  # hidden_size == d_model
    assert tied.output_projection.weight is tied.tgt_embed.weight
    untied = make_model("luong_general_gru")  # hidden_size 8, d_model 6
    assert untied.output_projection.weight.shape == (VOCAB, 8)
    separate = build_model(rnn_config(attention="bahdanau"), 9, VOCAB, share_all=False)
    assert separate.src_embed is not separate.tgt_embed
    assert separate.src_embed.weight.shape == (9, 6)


# ----------------------------------------------------------------------------------------------
# Incremental decoding and padding.


@pytest.mark.parametrize("variant", VARIANTS)
def test_incremental_decoding_with_beam_reorders_matches_teacher_forcing(variant):
    """start / step / reorder as beam search uses them: the rows expanded to K = 2 per
    sentence, moved within their sentence with the source left in place (source_order None),
    then a sentence leaving the batch (source_order given)."""
    model = make_model(variant, seed=2)
    torch.manual_seed(2)
    src, tgt = random_batch([5, 2, 4]), target_in(6, 5)
    expand = torch.tensor([0, 0, 1, 1, 2, 2])
    within = torch.tensor([1, 1, 2, 3, 5, 4])  # rows of the same sentence only
    leave = torch.tensor([2, 3, 4, 5])  # the first sentence is done
    sentence = expand  # the source sentence of each row
    fed = tgt[:, :0]  # the tokens each row was fed
    with torch.no_grad():
        state = model.start(src)
        model.reorder(state, expand, expand)
        steps = []
        for t in range(tgt.shape[1]):
            for at, order, source_order in ((2, within, None), (4, leave, leave)):
                if t == at:
                    model.reorder(state, order, source_order)
                    sentence, fed, steps = sentence[order], fed[order], [s[order] for s in steps]
            tokens = tgt[: len(fed), t : t + 1]  # each row's next token, as a search picks it
            fed = torch.cat([fed, tokens], dim=1)
            steps.append(model.step(state, tokens))
    full = log_probs(model, src[sentence], fed)
    torch.testing.assert_close(torch.stack(steps, 1), full, atol=ATOL, rtol=1e-5)
    assert steps[-1].dtype == torch.float32


@pytest.mark.parametrize("variant", VARIANTS)
def test_source_padding_and_future_targets_do_not_change_log_probs(variant):
    model = make_model(variant, seed=3)
    torch.manual_seed(3)
    src, tgt = random_batch([5, 2, 4]), target_in(3, 5)
    base = log_probs(model, src, tgt)
    padded = torch.cat([src, torch.full((3, 3), PAD)], dim=1)
    torch.testing.assert_close(log_probs(model, padded, tgt), base, atol=ATOL, rtol=1e-5)
    changed = tgt.clone()
    changed[:, 3:] = PAD
    torch.testing.assert_close(
        log_probs(model, src, changed)[:, :3], base[:, :3], atol=ATOL, rtol=0
    )


# ----------------------------------------------------------------------------------------------
# Searches and ensembles.

GREEDY = DecodeConfig(method="greedy", max_len_a=1.0, max_len_b=2)
BEAM = DecodeConfig(beam_size=3, length_penalty=0.0, max_len_a=1.0, max_len_b=2)


@pytest.mark.parametrize(
    "variant", ["bahdanau_lstm", "luong_general_gru", "luong_general_no_feeding"]
)
def test_searches_score_what_teacher_forcing_scores(variant):
    model = make_model(variant, seed=4, eos_scale=0.8)
    torch.manual_seed(4)
    lengths = [4, 1, 3]
    src = random_batch(lengths)
    greedy = greedy_search(model, src, GREEDY)
    for h, score in zip(greedy, rescore(model, src, [0, 1, 2], greedy)[0]):
        assert h.score == pytest.approx(score, abs=1e-4)
    nbest = beam_search(model, src, BEAM, nbest=3)
    rows = [r for r, hyps in enumerate(nbest) for _ in hyps]
    hyps = [h for hs in nbest for h in hs]
    for h, score in zip(hyps, rescore(model, src, rows, hyps)[0]):
        assert h.score == pytest.approx(score, abs=1e-4)
    for hs in nbest:
        assert [h.norm_score for h in hs] == sorted((h.norm_score for h in hs), reverse=True)
        assert len({tuple(h.tokens) for h in hs}) == len(hs)
        # Not asserted: beam's best >= greedy's. A beam of 3 may prune the greedy path (these
        # random weights after the Luong model took JoeyNMT's initialisation: greedy [7, 7, 7]
        # at -9.609, the beam's best [5, 7, 7] at -9.619); tests/test_model.py checks the
        # property on the Transformer models where it holds.
    beam1 = beam_search(model, src, DecodeConfig(beam_size=1, max_len_a=1.0, max_len_b=2))
    assert [b[0].tokens for b in beam1] == [g.tokens for g in greedy]
    # A sentence decodes the same alone (no padding) as in the batch.
    alone = beam_search(model, src[1:2, : lengths[1]], BEAM, nbest=3)[0]
    assert [h.tokens for h in alone] == [h.tokens for h in nbest[1]]
    # Sampling: the same seed, the same samples.
    sample = DecodeConfig(method="sample", max_len_a=1.0, max_len_b=2, top_k=5)
    draws = [
        [
            h.tokens
            for h in greedy_search(model, src, sample, generator=torch.Generator().manual_seed(7))
        ]
        for _ in range(2)
    ]
    assert draws[0] == draws[1]


def test_ensembles_of_rnns_and_transformers():
    rnn = make_model("bahdanau_gru", seed=5)
    torch.manual_seed(5)
    transformer = build_model(
        ModelConfig(d_model=8, heads=2, ff_dim=16, encoder_layers=1, decoder_layers=1),
        VOCAB,
        VOCAB,
        share_all=True,
    ).eval()
    src = random_batch([4, 2, 3])
    assert [h.tokens for h in greedy_search(Ensemble([rnn, rnn]).eval(), src, GREEDY)] == [
        h.tokens for h in greedy_search(rnn, src, GREEDY)
    ]
    assert [
        [h.tokens for h in hs] for hs in beam_search(Ensemble([rnn, rnn]), src, BEAM, nbest=2)
    ] == [[h.tokens for h in hs] for hs in beam_search(rnn, src, BEAM, nbest=2)]
    mixed = Ensemble([rnn, transformer, make_model("luong_concat_lstm", seed=6)]).eval()
    tgt = target_in(3, 3)
    with torch.no_grad():
        state = mixed.start(src)
        got = torch.stack([mixed.step(state, tgt[:, t : t + 1]) for t in range(3)], dim=1)
        members = [log_probs(m, src, tgt).double() for m in mixed.models]
    torch.testing.assert_close(
        got.double(), (sum(members) / 3).log_softmax(-1), atol=ATOL, rtol=1e-5
    )
    assert len(beam_search(mixed, src, BEAM, nbest=2)) == 3
    assert mixed.cross_attention(src, tgt).shape == (3, 3, 4)


@pytest.mark.parametrize("variant", ["bahdanau_gru", "luong_concat_lstm"])
def test_int8_quantizes_the_recurrent_layers_and_stays_close(variant):
    model = make_model(variant, seed=8)
    int8 = quantize_int8(copy.deepcopy(model))
    dynamic = torch.ao.nn.quantized.dynamic
    assert isinstance(int8.encoder, dynamic.GRU if "gru" in variant else dynamic.LSTM)
    assert isinstance(int8.decoder.rnn, type(int8.encoder))
    assert not any(type(m) is torch.nn.Linear for m in int8.modules())
    torch.manual_seed(8)
    src, tgt = random_batch([5, 3, 4]), target_in(3, 4)
    error = (log_probs(int8, src, tgt) - log_probs(model, src, tgt)).abs()
    assert error.mean() < 0.02 and error.max() < 0.1
    with torch.no_grad():
        weights = int8.cross_attention(src, tgt)
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 4))
    assert len(beam_search(int8, src, BEAM, nbest=2)) == 3


# ----------------------------------------------------------------------------------------------
# Recipe keys.


@pytest.mark.parametrize(
    "values, message",
    [
        ({"arch": "rnn"}, r"'model.attention' must be bahdanau or luong for model.arch rnn"),
        (
            {"arch": "rnn", "attention": "luong", "hidden_size": 7},
            r"'model.hidden_size' must be even",
        ),
        (
            {"arch": "rnn", "attention": "luong", "decoder_layers": 2},
            r"'model.decoder_layers' must equal model.encoder_layers with Luong",
        ),
        (
            {"arch": "rnn", "attention": "bahdanau", "input_feeding": False},
            r"'model.input_feeding' applies to Luong attention only",
        ),
        (
            {"arch": "rnn", "attention": "bahdanau", "heads": 8},
            r"'model.heads' applies to model.arch transformer only",
        ),
        ({"hidden_size": 256}, r"'model.hidden_size' applies to model.arch rnn only"),
        (
            {"attention": "luong", "luong_score": "concat"},
            r"'model.luong_score' concat is for arch rnn",
        ),
    ],
)
def test_recipe_keys_that_do_not_apply_are_refused(tmp_path, values, message):
    tree = tiny_recipe(tmp_path, tmp_path / "run")
    tree["model"] = {"encoder_layers": 1, "decoder_layers": 1, **values}
    with pytest.raises(NmtError, match=message):
        config.from_dict(tree)


def test_rnn_keys_load_and_odd_sizes_need_no_heads(tmp_path):
    tree = tiny_recipe(tmp_path, tmp_path / "run")
    tree["model"] = {"arch": "rnn", "attention": "luong", "luong_score": "concat", "d_model": 30}
    model = config.from_dict(tree).model
    assert (model.rnn_type, model.hidden_size, model.input_feeding) == ("gru", 512, True)


# ----------------------------------------------------------------------------------------------
# Training, checkpoints, averaging, exact resume, translation.


def rnn_recipe(corpus, run_dir, **train_values) -> dict:
    tree = tiny_recipe(
        corpus,
        run_dir,
        train={"max_tokens": 512, "max_steps": 8, "valid_every": 4, "log_every": 1, **train_values},
    )
    tree["model"] = {
        "arch": "rnn",
        "attention": "luong",
        "rnn_type": "lstm",
        "d_model": 16,
        "hidden_size": 16,
        "encoder_layers": 1,
        "decoder_layers": 1,
        "dropout": 0.1,  # draws random numbers: resuming must restore the generator
    }
    return tree


def test_train_average_resume_and_translate(tmp_path, small_corpus):
    tree = rnn_recipe(small_corpus, tmp_path / "run", average_last=2, threads=1)
    recipe = config.from_dict(tree)
    preprocess(recipe)
    train.train(recipe, progress=False)
    run = tmp_path / "run"
    assert (run / "averaged.pt").is_file()

    # Stopped at step 4 and resumed: the same per-step losses as the uninterrupted run.
    tree["run_dir"] = str(tmp_path / "resumed")
    tree["data"]["prepared_dir"] = str(recipe.prepared_dir)
    train.train(
        config.from_dict({**tree, "train": {**tree["train"], "max_steps": 4}}), progress=False
    )
    train.train(config.from_dict(tree), progress=False)
    expected, got = step_losses(run), step_losses(tmp_path / "resumed")
    assert sorted(got) == sorted(expected) == list(range(1, 9))
    for step in expected:
        assert got[step] == pytest.approx(expected[step], rel=1e-5, abs=1e-6)
    kinds = [json.loads(line)["kind"] for line in (tmp_path / "resumed" / "log.jsonl").open()]
    assert kinds.count("resume") == 1

    # The run folder's chosen checkpoint, rebuilt from its recipe alone; n-best and alignments.
    translator = Translator.load(run, beam_size=3)
    lines = list(files.read_lines(small_corpus / "test.en"))[:3]
    results = translator.translate_nbest(lines, nbest=2, alignment=True)
    for source, nbest in zip(lines, results):
        assert len(nbest) == 2
        n_source = len(translator.src_tok.encode([source])[0]) + 1
        for t in nbest:
            assert len(t.alignment) == len(t.pieces)
            assert all(0 <= a < n_source for a in t.alignment)
    int8 = Translator.load(run, quantize="int8", beam_size=3)
    assert len(int8.translate(lines)) == 3


# ----------------------------------------------------------------------------------------------
# Learning: each attention kind learns the toy task.


@pytest.mark.slow
@pytest.mark.parametrize(
    ("model", "steps"),
    [
        ({"attention": "bahdanau", "d_model": 64}, 300),
        ({"attention": "luong", "luong_score": "dot", "d_model": 128}, 250),
        # The general score learned far slower than the dot score here (BLEU 17 against 98
        # after 250-300 updates) until the Luong model took JoeyNMT's initialisation
        # (nmt.models.rnn._initialise): the same budget must do for both.
        ({"attention": "luong", "luong_score": "general", "d_model": 128}, 250),
    ],
    ids=["bahdanau", "luong", "luong_general"],
)
def test_rnn_learns_toy_task(tmp_path, toy_corpus, toy_prepared, model, steps):
    tree = tiny_recipe(
        toy_corpus,
        tmp_path / "run",
        data={"prepared_dir": str(toy_prepared)},
        tokenizer={"vocab_size": 160},
        train={
            "max_tokens": 2048,
            "lr": 0.005,
            "warmup_steps": 50,
            "max_steps": steps,
            "valid_every": steps,
            "threads": 1,  # a one-layer RNN's step is many tiny operations: one thread is faster
        },
        decode={"method": "greedy"},
    )
    tree["model"] = {
        "arch": "rnn",
        "rnn_type": "gru",
        "hidden_size": 128,
        "encoder_layers": 1,
        "decoder_layers": 1,
        "dropout": 0.0,
        **model,
    }
    train.train(config.from_dict(tree), progress=False)
    src = list(files.read_lines(toy_corpus / "test.en"))
    ref = list(files.read_lines(toy_corpus / "test.de"))
    bleu = score_lines(Translator.load(tmp_path / "run").translate(src), [ref])[0].score
    int8 = Translator.load(tmp_path / "run", quantize="int8")
    int8_bleu = score_lines(int8.translate(src), [ref])[0].score
    print(f"{model['attention']}: test BLEU {bleu:.1f}, int8 {int8_bleu:.1f}")
    assert bleu >= THRESHOLD
    assert int8_bleu >= bleu - 2.0
    assert math.isfinite(bleu)
