"""Hugging Face MarianMT in and out (`nmt import --from huggingface`, `nmt export --to
huggingface`), checked against transformers itself: a tiny MarianMT model built and briefly
trained here with transformers (no network), imported, must translate as `generate` does, token
for token, with the same log-probabilities; ours, exported, must translate in transformers as
in nmt; fine-tuning an imported model starts from its loss; bad folders are one line each."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import pytest
import sentencepiece as spm
import torch
from conftest import tiny_recipe
from test_cli import assert_user_error, nmt

from nmt import checkpoint, config
from nmt.data.preprocess import preprocess
from nmt.decoding.translator import Translator
from nmt.export.huggingface import EXCLUDED, export_marian, import_marian
from nmt.models.builder import load_model
from nmt.training import loop as train
from nmt.utils import files

transformers = pytest.importorskip("transformers", reason="needs pip install 'nmt[hf]'")
pytest.importorskip("safetensors")
from transformers import (  # noqa: E402
    LogitsProcessor,
    LogitsProcessorList,
    MarianConfig,
    MarianMTModel,
    MarianTokenizer,
)

pytestmark = pytest.mark.filterwarnings("ignore:Recommended. pip install sacremoses")

LIMIT = 60  # output tokens before EOS, in both toolkits (the model allows 63)
LINES = 40


def _build_marian(out: Path, corpus: Path, steps: int = 400) -> None:
    """What `save_pretrained` writes for a MarianMT model, laid out as OPUS-MT's: a SentencePiece
    model per side (unk 0, bos 1, eos 2, no pad), vocab.json with </s> 0, <unk> 1, the pieces of
    both, <pad> last; swish, post-norm, tied embeddings. Trained `steps` updates on the toy task
    so that its outputs end."""
    out.mkdir(parents=True)
    for side, lang in (("source", "en"), ("target", "de")):
        spm.SentencePieceTrainer.train(
            input=str(corpus / f"train.{lang}"),
            model_prefix=str(out / side),
            vocab_size=100,
            model_type="unigram",
            unk_id=0,
            bos_id=1,
            eos_id=2,
            pad_id=-1,
            minloglevel=2,
            num_threads=1,
        )
        (out / f"{side}.model").rename(out / f"{side}.spm")
        (out / f"{side}.vocab").unlink()
    pieces = ["</s>", "<unk>"]
    for side in ("source", "target"):
        sp = spm.SentencePieceProcessor(model_file=str(out / f"{side}.spm"))
        pieces += [
            p
            for i in range(sp.get_piece_size())
            if (p := sp.id_to_piece(i)) not in pieces
            and not sp.is_control(i)
            and not sp.is_unknown(i)
        ]
    pieces.append("<pad>")
    (out / "vocab.json").write_text(json.dumps({p: i for i, p in enumerate(pieces)}))
    V = len(pieces)
    cfg = MarianConfig(
        vocab_size=V,
        decoder_vocab_size=V,
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=64,
        pad_token_id=V - 1,
        eos_token_id=0,
        decoder_start_token_id=V - 1,
        forced_eos_token_id=0,
        activation_function="swish",
        scale_embedding=True,
        share_encoder_decoder_embeddings=True,
        dropout=0.0,
        init_std=0.02,
    )
    tok = MarianTokenizer(
        str(out / "source.spm"),
        str(out / "target.spm"),
        str(out / "vocab.json"),
        source_lang="en",
        target_lang="de",
    )
    torch.manual_seed(0)
    model = MarianMTModel(cfg)
    with torch.no_grad():
        model.final_logits_bias.normal_(0.0, 0.5)  # a bias of its own, to be carried over
    src = list(files.read_lines(corpus / "train.en"))
    tgt = list(files.read_lines(corpus / "train.de"))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(steps):
        i = step * 32 % (len(src) - 32)
        batch = tok(src[i : i + 32], text_target=tgt[i : i + 32], return_tensors="pt", padding=True)
        batch["labels"][batch["labels"] == tok.pad_token_id] = -100
        loss = model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval().save_pretrained(out)
    tok.save_pretrained(out)


@pytest.fixture(scope="module")
def marian(tmp_path_factory, small_corpus) -> Path:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        folder = tmp_path_factory.mktemp("hf") / "opus-mt-en-de"
        _build_marian(folder, small_corpus)
    finally:
        torch.set_num_threads(threads)
    return folder


@pytest.fixture(scope="module")
def imported(marian, tmp_path_factory) -> Path:
    return import_marian(marian, tmp_path_factory.mktemp("imported") / "run")


class _EosAtLimit(LogitsProcessor):
    """At the last position only EOS, keeping its log-probability, as fairseq and nmt do
    (transformers' own forced_eos_token_id scores it 0, which reorders finished beams)."""

    def __init__(self, max_length: int, eos: int) -> None:
        self.max_length, self.eos = max_length, eos

    def __call__(self, input_ids, scores):
        if input_ids.shape[-1] == self.max_length - 1:
            eos = scores[:, self.eos].clone()
            scores = torch.full_like(scores, -math.inf)
            scores[:, self.eos] = eos
        return scores


def _generate(folder: Path, lines: list[str], beams: int) -> tuple[list[list[str]], list[float]]:
    """transformers' translations of `lines` (as pieces, EOS excluded) and their scores."""
    model = MarianMTModel.from_pretrained(folder).eval()
    tok = MarianTokenizer.from_pretrained(folder)
    batch = tok(lines, return_tensors="pt", padding=True)
    max_length = LIMIT + 2  # the start token, LIMIT tokens, EOS
    with torch.no_grad():
        out = model.generate(
            **batch,
            num_beams=beams,
            do_sample=False,
            length_penalty=0.0,
            early_stopping=True,
            max_length=max_length,
            forced_eos_token_id=None,
            bad_words_ids=[[model.config.pad_token_id]],
            logits_processor=LogitsProcessorList(
                [_EosAtLimit(max_length, model.config.eos_token_id)]
            ),
        )
        # Each output's log-probability, teacher-forced: log-softmax over the whole vocabulary
        # at every position up to its EOS, as beam search's own scores are.
        # After its EOS a sequence is filled with pad, or with EOS where pad is id 0.
        ended = out[:, 1:].eq(model.config.eos_token_id).cumsum(1)
        after = (ended - out[:, 1:].eq(model.config.eos_token_id).long()) > 0
        labels = out[:, 1:].masked_fill(after, -100)
        logits = model(**batch, decoder_input_ids=out[:, :-1]).logits
        log_probs = torch.log_softmax(logits, -1)
    picked = log_probs.gather(-1, labels.clamp(min=0)[..., None])[..., 0]
    scores = picked.masked_fill(labels == -100, 0.0).sum(-1).tolist()
    pieces = [tok.convert_ids_to_tokens([int(t) for t in row[row >= 0][:-1]]) for row in labels]
    return pieces, scores, tok.batch_decode(out, skip_special_tokens=True)


def _reference_scores(folder: Path, src: list[str], tgt: list[str]) -> list[tuple[float, int]]:
    """transformers' log-probability of each reference (EOS included) and its token count."""
    model = MarianMTModel.from_pretrained(folder).eval()
    tok = MarianTokenizer.from_pretrained(folder)
    batch = tok(src, text_target=tgt, return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = model(**batch).logits
    picked = torch.log_softmax(logits, -1).gather(-1, batch["labels"][..., None])[..., 0]
    lengths = batch["labels"].ne(tok.pad_token_id).sum(1).tolist()
    return [(float(picked[i, :n].sum()), n) for i, n in enumerate(lengths)]


def _translate(
    run: Path, lines: list[str], beams: int
) -> tuple[list[list[str]], list[float], list[str]]:
    """nmt's search output for `lines` (as pieces, EOS excluded), its scores, and the texts
    `Translator.translate` gives."""
    method = {"method": "greedy"} if beams == 1 else {"beam_size": beams}
    translator = Translator.load(run, length_penalty=0.0, max_len_a=0.0, max_len_b=LIMIT, **method)
    ids = translator.src_tok.encode(lines)
    best = [n[0] for n in translator.engine.search(ids, 1, translator.decode)]
    pieces = [translator.tgt_tok.id_pieces(h.tokens) for h in best]
    return pieces, [h.score for h in best], translator.translate(lines)


def _assert_same(ours: tuple, theirs: tuple, lines: list[str]) -> None:
    for line, mine, pieces, score, their_score, text, their_text in zip(
        lines, ours[0], theirs[0], ours[1], theirs[1], ours[2], theirs[2]
    ):
        assert mine == pieces, line
        assert abs(score - their_score) < 1e-4 * max(1.0, abs(their_score)), line
        assert text == their_text, line


@pytest.mark.parametrize("beams", [1, 4])
def test_imported_model_translates_as_transformers(imported, marian, small_corpus, beams):
    lines = list(files.read_lines(small_corpus / "test.en"))[:LINES]
    theirs = _generate(marian, lines, beams)
    _assert_same(_translate(imported, lines, beams), theirs, lines)
    assert sum(len(p) == LIMIT for p in theirs[0]) < len(lines) // 4  # mostly ended by EOS


def test_imported_log_probabilities_equal_transformers(imported, marian, small_corpus):
    src = list(files.read_lines(small_corpus / "test.en"))[:8]
    tgt = list(files.read_lines(small_corpus / "test.de"))[:8]
    ours = Translator.load(imported).score_references(src, tgt)
    for score, (theirs, n) in zip(ours, _reference_scores(marian, src, tgt)):
        assert score.tokens == n
        assert abs(score.score - theirs) < 1e-4 * n


def test_imported_run_is_a_run_folder(imported, marian):
    state = checkpoint.load(imported)
    recipe, model, src_tok, tgt_tok = load_model(state, imported)
    assert recipe.model.activation == "silu" and recipe.model.norm == "post"
    assert recipe.model.output_bias and recipe.data.src_lang == "en"
    # One vocabulary (ids mean the same piece on both sides), a SentencePiece model per side.
    assert src_tok.id_pieces(range(len(src_tok))) == tgt_tok.id_pieces(range(len(tgt_tok)))
    assert src_tok.proto != tgt_tok.proto
    vocab = json.loads((marian / "vocab.json").read_text())
    assert len(tgt_tok) == len(vocab) + 1  # our PAD row
    assert model.output_bias[0] == EXCLUDED
    hf = MarianMTModel.from_pretrained(marian)
    assert torch.allclose(
        model.output_bias[4 : len(vocab) + 1], hf.final_logits_bias[0, 2:-1]
    )  # the pieces after </s> and <unk>


def test_exported_model_translates_as_nmt_in_transformers(imported, small_corpus, tmp_path):
    """Ours (the imported model fine-tuned a few updates, post-norm) -> MarianMT folder ->
    transformers' generate gives nmt's translations and scores."""
    run = _fine_tune(imported, small_corpus, tmp_path / "tuned", steps=10)
    out = export_marian(run, tmp_path / "hf")
    lines = list(files.read_lines(small_corpus / "test.en"))[:LINES]
    for beams in (1, 4):
        _assert_same(_translate(run, lines, beams), _generate(out, lines, beams), lines)
    tok = MarianTokenizer.from_pretrained(out)
    assert tok.batch_decode(tok(lines[:3])["input_ids"], skip_special_tokens=True) == lines[:3]


def test_exported_from_scratch_model_scores_as_in_transformers(small_corpus, tmp_path):
    """A post-norm, relu model of our own (random weights, a joint vocabulary of ours): the
    exported MarianMT gives the same teacher-forced log-probabilities."""
    recipe = config.from_dict(
        tiny_recipe(
            small_corpus,
            tmp_path / "run",
            model={"norm": "post", "activation": "relu"},
            train={"max_steps": 2},
        )
    )
    preprocess(recipe)
    train.train(recipe, progress=False)
    out = export_marian(tmp_path / "run", tmp_path / "hf")
    src = list(files.read_lines(small_corpus / "test.en"))[:6]
    tgt = list(files.read_lines(small_corpus / "test.de"))[:6]
    ours = Translator.load(tmp_path / "run").score_references(src, tgt)
    for score, (theirs, n) in zip(ours, _reference_scores(out, src, tgt)):
        assert abs(score.score - theirs) < 1e-4 * n


def _fine_tune(imported: Path, corpus: Path, run_dir: Path, steps: int) -> Path:
    model = dataclasses.asdict(config.load(imported / "recipe.yaml").model)
    recipe = config.from_dict(
        tiny_recipe(
            corpus,
            run_dir,
            model=model,  # fine-tuning keeps the imported architecture
            train={
                "init_from": str(imported),
                "max_steps": steps,
                "valid_every": steps,
                "log_every": 1,
                "lr": 1e-4,
                "warmup_steps": 1,
                "label_smoothing": 0.0,
            },
        )
    )
    preprocess(recipe)
    train.train(recipe, progress=False)
    return run_dir


def test_fine_tuning_an_imported_model_starts_from_its_loss(
    imported, marian, small_corpus, tmp_path
):
    run = _fine_tune(imported, small_corpus, tmp_path / "tuned", steps=3)
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    first = next(r for r in records if r["kind"] == "train")["loss"]
    # The imported model's own loss per token on training pairs, in transformers.
    model = MarianMTModel.from_pretrained(marian).eval()
    tok = MarianTokenizer.from_pretrained(marian)
    src = list(files.read_lines(small_corpus / "train.en"))[:256]
    tgt = list(files.read_lines(small_corpus / "train.de"))[:256]
    batch = tok(src, text_target=tgt, return_tensors="pt", padding=True)
    batch["labels"][batch["labels"] == tok.pad_token_id] = -100
    with torch.no_grad():
        theirs = model(**batch).loss.item()
    # One batch against the first 256 pairs: near, not equal.
    assert 0.5 * theirs < first < 2 * theirs, (first, theirs)
    assert first < 0.6 * math.log(len(tok)), first  # far from a fresh model's log V


# -- bad input: one line, exit 2, nothing written ------------------------------------------


def _copy(marian: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(marian, tmp_path / "model"))


def _refused(folder: Path, tmp_path: Path, *fragments: str) -> None:
    run = tmp_path / "run"
    assert_user_error(nmt("import", folder, run, "--from", "huggingface"), *fragments)
    assert not run.exists()
    assert not list(tmp_path.glob(".run*"))


def test_import_refuses_a_folder_that_is_not_a_model(tmp_path):
    (tmp_path / "empty").mkdir()
    _refused(tmp_path / "empty", tmp_path, "no config.json")
    _refused(tmp_path / "missing", tmp_path, "not a folder")


def test_import_refuses_other_architectures(marian, tmp_path):
    folder = _copy(marian, tmp_path)
    for kind, arch in (
        ("bart", "BartForConditionalGeneration"),
        ("t5", "T5ForConditionalGeneration"),
    ):
        cfg = json.loads((marian / "config.json").read_text())
        cfg.update(model_type=kind, architectures=[arch])
        (folder / "config.json").write_text(json.dumps(cfg))
        _refused(folder, tmp_path, f"describes a {kind} model", "MarianMT models")


def test_import_refuses_unsupported_marian_variants(marian, tmp_path):
    folder = _copy(marian, tmp_path)
    cfg = json.loads((marian / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "decoder_ffn_dim": 128}))
    _refused(folder, tmp_path, "encoder_ffn_dim == decoder_ffn_dim")
    (folder / "config.json").write_text(json.dumps({**cfg, "normalize_before": True}))
    _refused(folder, tmp_path, "sets normalize_before")


def test_import_refuses_missing_tokenizer_files(marian, tmp_path):
    folder = _copy(marian, tmp_path)
    (folder / "target.spm").unlink()
    _refused(folder, tmp_path, "no target.spm")
    shutil.copy(marian / "target.spm", folder / "target.spm")
    (folder / "vocab.json").unlink()
    _refused(folder, tmp_path, "no vocab.json")


def test_import_refuses_a_vocabulary_of_other_weights(marian, tmp_path):
    folder = _copy(marian, tmp_path)
    vocab = json.loads((marian / "vocab.json").read_text())
    fewer = {p: i for p, i in vocab.items() if i < len(vocab) - 5}
    (folder / "vocab.json").write_text(json.dumps(fewer))
    _refused(folder, tmp_path, "does not belong to these weights")
    (folder / "vocab.json").write_text(json.dumps({**vocab, ">>fra<<": len(vocab)}))
    _refused(folder, tmp_path, "multilingual")


def test_import_refuses_an_existing_run_folder(marian, imported, tmp_path):
    assert_user_error(nmt("import", marian, imported, "--from", "huggingface"), "not empty")
    assert_user_error(
        nmt("import", marian, tmp_path / "r", "--from", "opennmt"), "unknown import format"
    )


def test_import_and_export_through_the_command_line(marian, tmp_path, trained_run, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = nmt("import", marian, "runs/run", "--from", "huggingface")  # makes runs/ too
    assert result.exit_code == 0, result.output
    assert (tmp_path / "runs" / "run" / "best.pt").is_file()
    # The run folder's recipe names the run folder itself, wherever it is read from.
    recipe = config.load(tmp_path / "runs" / "run" / "recipe.yaml")
    assert Path(recipe.run_dir) == tmp_path / "runs" / "run"
    result = nmt("export", "runs/run", tmp_path / "hf", "--to", "huggingface")
    assert result.exit_code == 0, result.output
    assert MarianMTModel.from_pretrained(tmp_path / "hf").config.d_model == 32
    # A pre-norm model has no MarianMT equivalent: said in one line, nothing written.
    assert_user_error(
        nmt("export", trained_run, tmp_path / "pre", "--to", "huggingface"), "model.norm is pre"
    )
    assert not (tmp_path / "pre").exists()


def test_imported_model_exports_to_ctranslate2(imported, small_corpus, tmp_path):
    """swish and the output bias carried into CTranslate2: its greedy translations and scores
    are ours."""
    pytest.importorskip("ctranslate2")
    from nmt.export.ctranslate2 import export

    folder = export(imported, tmp_path / "ct2")
    lines = list(files.read_lines(small_corpus / "test.en"))[:LINES]
    ours = Translator.load(imported, method="greedy").translate_nbest(lines)
    theirs = Translator.load(folder, method="greedy").translate_nbest(lines)
    for mine, other in zip(ours, theirs):
        assert mine[0].text == other[0].text
        assert mine[0].score == pytest.approx(other[0].score, abs=1e-3)
