"""`nmt export --to ctranslate2` and decoding the exported folder with CTranslate2, measured
against our own decoder on the same weights.

The model: the tiny recipe trained for 300 steps at a high learning rate, so that on the toy
test set most beam searches end with EOS, at various lengths, while some sentences run to their
length limit, where the two searches differ by design. Both decoders run on the test set
as one batch (as `nmt translate` batches it), in fp32, on one thread.

What is compared, and what may differ (nmt/decoding/ct2.py says how the options map):
- Greedy search: every line, tokens equal and scores within 1e-3, length limits included (a
  hypothesis cut at its limit is scored with EOS by CTranslate2's score_batch, as ours).
- Beam search (K = 5): every line whose search ends before the step before its length limit:
  the best hypothesis and the whole 5-best list equal, scores within 1e-3. CTranslate2 ranks by
  score / length ** beta; it runs with beta = 1e-6 (by log-probability), and our GNMT ranking,
  ((5 + length) / 6) ** alpha with EOS in the length, is applied to the hypotheses it returns.
  When more hypotheses finish at a sentence's last step than it needs, ours keeps the first K,
  CTranslate2 the K most likely of all: our best is always among them (nmt/decoding/ct2.py says why);
  for n-best lists such a sentence is decoded again keeping all, and the first K are taken.
- Beam search, sentences reaching the step before their limit: CTranslate2 finishes its K best
  candidates of that step, EOS or not; ours finishes the EOS among them and gives the K best
  others one more step, where only EOS may follow. So only this is checked there: its best
  hypothesis is no longer than the limit and scores what our model gives it, EOS included.
- Not compared: sampling (each draws from its own generator), no_repeat_ngram and min_len
  (CTranslate2 bans tokens before its softmax, ours after, so scores and then choices move).
- Differences that do not show here: PAD and BOS, which ours masks after the softmax, are
  suppressed by CTranslate2 only for a sentence where it emitted one; and the two compute the
  same sums in other orders (1e-5 apart), so exact near-ties may break the other way.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from nmt import checkpoint, config
from nmt.cli import app
from nmt.data.batches import pad_sequences
from nmt.data.tokenizer import BOS, EOS
from nmt.decoding.ct2 import EXPORT_FILE
from nmt.decoding.search import max_lengths
from nmt.decoding.translator import Translator
from nmt.errors import NmtError
from nmt.export.ctranslate2 import export
from nmt.models.builder import build_model, load_model

ctranslate2 = pytest.importorskip("ctranslate2")
runner = CliRunner()


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)  # conftest puts the thread count back after each test


@pytest.fixture(scope="module")
def exported(learned_run, tmp_path_factory) -> Path:
    return export(learned_run, tmp_path_factory.mktemp("ct2") / "model")


@pytest.fixture(scope="module")
def toy_test_set(small_corpus) -> tuple[list[str], list[str]]:
    """The toy test set: sources and references."""
    return tuple(
        (small_corpus / f"test.{lang}").read_text(encoding="utf-8").splitlines()
        for lang in ("en", "de")
    )


def teacher_forced_scores(model, src: list[int], hyps: list[list[int]]) -> list[float]:
    """Our model's log-probability of each hypothesis followed by EOS."""
    n = len(hyps)
    src_t = pad_sequences([torch.tensor(src)] * n, None, EOS)
    tgt_in = pad_sequences([torch.tensor(h) for h in hyps], BOS, None)
    with torch.inference_mode():
        log_probs = model(src_t, tgt_in).log_softmax(-1)
    return [
        sum(log_probs[i, t, tok].item() for t, tok in enumerate(h + [EOS]))
        for i, h in enumerate(hyps)
    ]


def assert_same(ours, theirs) -> None:
    assert [h.tokens for h in theirs] == [h.tokens for h in ours]
    for a, b in zip(ours, theirs):
        assert b.score == pytest.approx(a.score, abs=1e-3)
        assert b.norm_score == pytest.approx(a.norm_score, abs=1e-3)


def test_export_writes_the_model_tokenizers_and_defaults(
    learned_run, exported, tmp_path, monkeypatch
):
    names = {p.name for p in exported.iterdir()}
    assert {"model.bin", "config.json", "source.spm", "target.spm", EXPORT_FILE} <= names
    assert not list(exported.parent.glob(".*partial"))
    metadata = json.loads((exported / EXPORT_FILE).read_text())
    assert (metadata["source_lang"], metadata["target_lang"]) == ("en", "de")
    assert metadata["decode"]["beam_size"] == 5 and metadata["max_positions"] == 1024
    ct2_config = json.loads((exported / "config.json").read_text())
    assert ct2_config["add_source_eos"] and not ct2_config["add_source_bos"]
    assert ct2_config["decoder_start_token"] == "<s>" and ct2_config["eos_token"] == "</s>"
    # Tuned settings in the run's recipe.yaml become the export's defaults, as for translate.
    tuned = tmp_path / "tuned"
    tuned.mkdir()
    for name in ("best.pt", "recipe.yaml"):
        (tuned / name).write_bytes((learned_run / name).read_bytes())
    recipe_yaml = tuned / "recipe.yaml"
    recipe_yaml.write_text(recipe_yaml.read_text().replace("beam_size: 5", "beam_size: 7"))
    out = export(learned_run, tmp_path / "out")
    with pytest.raises(NmtError, match="holds an exported model; use --force"):
        export(tuned, out)
    export(tuned, out, force=True)
    assert json.loads((out / EXPORT_FILE).read_text())["decode"]["beam_size"] == 7
    # --force replaces an export, never another folder (a run folder, say), and no message
    # suggests --force for one.
    for forced in (False, True):
        with pytest.raises(NmtError, match="was not written by nmt export") as error:
            export(learned_run, tuned, force=forced)
        assert "--force" not in str(error.value)
    assert (tuned / "best.pt").is_file()
    # An existing empty folder is a destination, with or without --force.
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (export(learned_run, empty) / EXPORT_FILE).is_file()
    # Every file of an export can be read by whoever can read model.bin (no private 0600).
    modes = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()}
    assert len(set(modes.values())) == 1, modes

    # A destination folder that refuses to be written (read-only; root ignores permission
    # bits, so the refusal is staged): one line, nothing left behind.
    def refuse(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "mkdir", refuse)
    with pytest.raises(NmtError, match="cannot write .*: Permission denied"):
        export(learned_run, tmp_path / "read_only")
    assert not list(tmp_path.glob("**/.*partial"))


def save_variant(state: dict, path: Path, **model: object) -> Path:
    """`state`'s checkpoint with other model settings and fresh (seeded) weights."""
    recipe = dict(state["recipe"], model={**state["recipe"]["model"], **model})
    args = dict(state["model_args"], share_all=recipe["model"]["share_all_embeddings"])
    torch.manual_seed(3)
    cfg = config.from_dict(recipe).model
    net = build_model(cfg, args["src_vocab"], args["tgt_vocab"], args["share_all"])
    checkpoint.save(
        {**state, "recipe": recipe, "model_args": args, "model": net.state_dict()}, path
    )
    return path


@pytest.mark.parametrize(
    "variant",
    [
        {},
        {"norm": "post", "activation": "gelu", "share_all_embeddings": False, "encoder_layers": 2},
    ],
    ids=["trained-pre-norm", "post-norm-gelu-untied"],
)
def test_ctranslate2_scores_like_our_model(learned_run, toy_test_set, tmp_path, variant):
    """The weight mapping, token by token: CTranslate2's log-probabilities of the reference
    translations (score_batch) against our model's, teacher-forced."""
    source = checkpoint.resolve(learned_run)
    if variant:
        source = save_variant(checkpoint.load(source), tmp_path / "variant.pt", **variant)
    folder = export(source, tmp_path / "ct2")
    _, model, src_tok, tgt_tok = load_model(checkpoint.load(source))
    model.eval()
    sources = src_tok.encode(toy_test_set[0][:8])
    targets = tgt_tok.encode(toy_test_set[1][:8])
    translator = ctranslate2.Translator(str(folder), device="cpu", intra_threads=1)
    scored = translator.score_batch(
        [src_tok.id_pieces(s) for s in sources], [tgt_tok.id_pieces(t) for t in targets]
    )
    for src, tgt, result in zip(sources, targets, scored):
        assert len(result.log_probs) == len(tgt) + 1  # EOS
        assert sum(result.log_probs) == pytest.approx(
            teacher_forced_scores(model, src, [tgt])[0], abs=1e-4
        )


def load_both(run: Path, folder: Path, **decode: object) -> tuple[Translator, Translator]:
    """Our translator and CTranslate2's, on the same weights and decoding settings."""
    return Translator.load(run, device="cpu", **decode), Translator.load(folder, **decode)


def decode_all(translator: Translator, lines: list[str], nbest: int):
    """Each line's hypotheses (token ids, scores), the whole set decoded as one batch."""
    return translator.engine.search(translator._encode(lines), nbest, translator.decode)


def line_limits(translator: Translator, lines: list[str]) -> list[int]:
    d = translator.decode
    src = pad_sequences([torch.tensor(s) for s in translator._encode(lines)], None, EOS)
    return max_lengths(src, d.max_len_a, d.max_len_b, translator.model.max_output_length)


def test_greedy_search_equals_ours_on_every_line(learned_run, exported, toy_test_set):
    ours, theirs = load_both(learned_run, exported, method="greedy")
    lines = toy_test_set[0]
    expected = decode_all(ours, lines, 1)
    for a, b in zip(expected, decode_all(theirs, lines, 1)):
        assert_same(a, b)
    cut = sum(len(a[0].tokens) == n for a, n in zip(expected, line_limits(ours, lines)))
    assert 0 < cut < len(lines)  # lines ended by EOS, and lines cut at their limit


def test_beam_search_equals_ours_before_the_length_limit(learned_run, exported, toy_test_set):
    ours, theirs = load_both(learned_run, exported, method="beam", beam_size=5)
    lines = toy_test_set[0]
    limits = line_limits(ours, lines)
    expected = decode_all(ours, lines, 5)  # every finished hypothesis: K = 5
    best, five_best = decode_all(theirs, lines, 1), decode_all(theirs, lines, 5)
    reached = [max(len(h.tokens) for h in hyps) >= n - 1 for hyps, n in zip(expected, limits)]
    assert 0 < sum(reached) < len(lines) / 2
    sources = ours._encode(lines)
    for i, hyps in enumerate(expected):
        if not reached[i]:
            assert_same(hyps[:1], best[i])
            assert_same(hyps, five_best[i])
            continue
        for found in (best[i][0], five_best[i][0]):
            assert len(found.tokens) <= limits[i]
            score = teacher_forced_scores(ours.model, sources[i], [found.tokens])[0]
            assert found.score == pytest.approx(score, abs=1e-3)


def nmt(*args: object, input: str | None = None):
    return runner.invoke(app, [str(a) for a in args], input=input)


def test_translate_command_reads_an_exported_folder(learned_run, exported):
    """The same input handling and output formats as for the run folder: stdin, order, empty
    lines, n-best text lines, jsonl records with alignments."""
    text = "A boy sang.\n\nThe king followed the farmer.\n   \nA dog pushed a red boy.\n"
    for args in (["--greedy"], ["--nbest", "2"]):
        ours = nmt("-q", "translate", learned_run, *args, input=text)
        theirs = nmt("-q", "translate", exported, *args, input=text)
        assert ours.exit_code == 0 and theirs.exit_code == 0, theirs.output
        assert theirs.stdout == ours.stdout
    args = ["--output-format", "jsonl", "--alignment", "--nbest", "2"]
    ours = [
        json.loads(line)
        for line in nmt("-q", "translate", learned_run, *args, input=text).stdout.splitlines()
    ]
    theirs = [
        json.loads(line)
        for line in nmt("-q", "translate", exported, *args, input=text).stdout.splitlines()
    ]
    assert len(theirs) == 5 and theirs[1]["nbest"] == [
        {"translation": "", "score": 0.0, "norm_score": 0.0}
    ]
    for a, b in zip(ours, theirs):
        assert a.keys() == b.keys() and a["source"] == b["source"]
        for x, y in zip(a["nbest"], b["nbest"]):
            assert (x["translation"], x.get("tokens")) == (y["translation"], y.get("tokens"))
            assert y["score"] == pytest.approx(x["score"], abs=1e-3)


def test_attention_equals_ours(learned_run, exported, toy_test_set):
    """Cross-attention of the last decoder layer, mean over heads, source and target EOS
    included (alignments take its argmax, a heatmap plots it)."""
    ours, theirs = load_both(learned_run, exported, method="greedy")
    lines = toy_test_set[0][:4]
    for a, b in zip(
        ours.translate_nbest(lines, attention=True), theirs.translate_nbest(lines, attention=True)
    ):
        assert a[0].pieces == b[0].pieces
        assert torch.tensor(b[0].attention) == pytest.approx(torch.tensor(a[0].attention), abs=1e-4)


def test_reference_scores_equal_ours(learned_run, exported, toy_test_set):
    """Forced decoding of given references through CTranslate2's score_batch: the log-
    probabilities our model gives them (EOS included), per line."""
    ours, theirs = load_both(learned_run, exported)
    sources, references = toy_test_set[0][:8], toy_test_set[1][:8]
    for a, b in zip(
        ours.score_references(sources, references), theirs.score_references(sources, references)
    ):
        assert b.tokens == a.tokens
        assert b.score == pytest.approx(a.score, abs=1e-3)


def test_sampling_is_seeded(exported, toy_test_set):
    lines = toy_test_set[0][:6]
    draws = [
        Translator.load(
            exported, device="cpu", method="sample", top_k=10, sampling_seed=seed
        ).translate(lines)
        for seed in (1, 1, 2)
    ]
    assert draws[0] == draws[1] != draws[2]


def test_int8_export(learned_run, exported, toy_test_set, tmp_path):
    """Weights stored in int8 take less space (here the fp32 position table, 1024 × 32, is most
    of it) and translate as the float export quantized on loading (--quantize int8) does."""
    int8 = export(learned_run, tmp_path / "int8", quantization="int8")
    assert (int8 / "model.bin").stat().st_size < (exported / "model.bin").stat().st_size
    lines = toy_test_set[0][:10]
    stored = Translator.load(int8, device="cpu", method="greedy").translate(lines)
    loaded = Translator.load(exported, device="cpu", method="greedy", quantize="int8")
    assert loaded.translate(lines) == stored and all(stored)


@pytest.mark.parametrize(
    "model, why",
    [
        ({"attention": "luong"}, "luong at encoder, luong at decoder, luong at cross"),
        (
            {"attention": {"encoder": "multihead", "decoder": "multihead", "cross": "bahdanau"}},
            "bahdanau at cross attention",
        ),
        (
            # heads and ff_dim back to their defaults, which an RNN recipe must keep
            {"arch": "rnn", "attention": "bahdanau", "hidden_size": 32, "heads": 4, "ff_dim": 1024},
            "model.arch rnn",
        ),
    ],
    ids=["luong", "mixed", "rnn"],
)
def test_other_models_are_refused(learned_run, tmp_path, model, why):
    variant = save_variant(
        checkpoint.load(checkpoint.resolve(learned_run)), tmp_path / "v.pt", **model
    )
    result = nmt("export", variant, "--to", "ctranslate2", tmp_path / "out")
    assert result.exit_code == 2 and result.stderr.startswith("error: ")
    message = " ".join(result.stderr.split())
    assert why in message and "cannot be exported" in message
    assert len(result.stderr.strip().splitlines()) == 1  # one line, never wrapped
    assert not (tmp_path / "out").exists()


def test_the_export_message_gives_a_command_to_copy(learned_run, tmp_path):
    """stderr is no terminal here: the command must still come on one line, whole."""
    out = tmp_path / ("a_rather_long_folder_name_for_the_exported_model_" * 2)
    result = nmt("-q", "export", learned_run, "--to", "ctranslate2", out)
    assert result.exit_code == 0, result.output
    assert f"translate with: nmt translate {out}\n" in result.stderr


def test_without_ctranslate2_one_line_says_how_to_install(
    learned_run, exported, tmp_path, monkeypatch
):
    monkeypatch.setitem(sys.modules, "ctranslate2", None)  # `import ctranslate2` fails
    for args in (
        ["export", learned_run, "--to", "ctranslate2", tmp_path / "out"],
        ["translate", exported],
    ):
        result = nmt(*args, input="A boy sang.\n")
        assert result.exit_code == 2, result.output
        assert "pip install 'nmt[ctranslate2]'" in result.stderr
