"""Preprocessing (checks, SentencePiece, filters, mmap binaries) and token-count batching."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import tiny_recipe

from nmt import config
from nmt.data.batches import collate, token_batches
from nmt.data.dataset import Prepared, TokenArray
from nmt.data.preprocess import preprocess
from nmt.data.tokenizer import BOS, EOS, PAD
from nmt.errors import NmtError
from nmt.utils.files import read_lines


def recipe_for(corpus: Path, run_dir: Path, **sections) -> config.Recipe:
    return config.from_dict(tiny_recipe(corpus, run_dir, **sections))


def write_pair(folder: Path, split: str, src: list[str], tgt: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{split}.en").write_text("".join(s + "\n" for s in src), encoding="utf-8")
    (folder / f"{split}.de").write_text("".join(t + "\n" for t in tgt), encoding="utf-8")


def test_binarized_ids_equal_sentencepiece_encoding(tmp_path, small_corpus):
    recipe = recipe_for(small_corpus, tmp_path / "run")
    manifest = preprocess(recipe)
    prepared = Prepared.open(recipe.prepared_dir)
    assert manifest["splits"]["valid"] == 40
    assert manifest["vocab"] == {"src": 120, "tgt": 120}
    on_disk = json.loads((recipe.prepared_dir / "manifest.json").read_text())
    assert on_disk == manifest
    # Validation is kept whole and in order: compare every sentence with a fresh encoding.
    src_lines = list(read_lines(small_corpus / "valid.en"))
    tgt_lines = list(read_lines(small_corpus / "valid.de"))
    valid = prepared.dataset("valid")
    assert len(valid) == len(src_lines)
    for i, (s, t) in enumerate(
        zip(prepared.src_tok.encode(src_lines), prepared.tgt_tok.encode(tgt_lines))
    ):
        assert valid.src[i].tolist() == s
        assert valid.tgt[i].tolist() == t
    assert prepared.raw_valid() == (src_lines, tgt_lines)
    # The binaries are two bytes a token, mapped rather than read.
    assert valid.src.tokens.dtype == torch.int16
    n_tokens = int(valid.src.offsets[-1])
    assert (recipe.prepared_dir / "valid.en.bin").stat().st_size == 2 * n_tokens


def test_separate_bpe_vocabularies(tmp_path, small_corpus):
    recipe = recipe_for(
        small_corpus, tmp_path / "run", tokenizer={"type": "bpe", "joint": False, "vocab_size": 90}
    )
    manifest = preprocess(recipe)
    assert manifest["tokenizers"] == {"src": "spm.en.model", "tgt": "spm.de.model"}
    prepared = Prepared.open(recipe.prepared_dir)
    assert len(prepared.src_tok) == len(prepared.tgt_tok) == 90
    # The German-like side has words the English side never uses.
    assert prepared.src_tok.pieces("knabo") != prepared.tgt_tok.pieces("knabo")


def test_reuses_given_sentencepiece_model(tmp_path, small_corpus):
    first = recipe_for(small_corpus, tmp_path / "a")
    preprocess(first)
    model = first.prepared_dir / "spm.model"
    second = recipe_for(small_corpus, tmp_path / "b", tokenizer={"src_model": str(model)})
    preprocess(second)
    assert (second.prepared_dir / "spm.model").read_bytes() == model.read_bytes()


def test_filters_count_each_rule(tmp_path):
    corpus = tmp_path / "corpus"
    words = "the dog saw a cat near the red house".split()
    src = [" ".join(words[: 3 + i % 6]) for i in range(200)]
    tgt = [s.upper() for s in src]
    src += ["", "the dog", " ".join(words * 20), "the dog saw a cat"]
    tgt += ["DER HUND", "  ", "DER", "THE DOG SAW A CAT"]
    write_pair(corpus, "train", src, tgt)
    write_pair(corpus, "valid", src[:5], tgt[:5])
    recipe = recipe_for(
        corpus,
        tmp_path / "run",
        tokenizer={"vocab_size": 40},
        filter={"max_len": 40, "max_ratio": 2.5, "dedup": True},
    )
    stats = preprocess(recipe)["filter"]
    assert stats["read"] == 204
    assert stats["empty"] == 2
    assert stats["too_long"] == 1
    # 200 pairs with 6 distinct sources; the extra "the dog saw a cat" pair repeats one too.
    assert stats["duplicate"] == 200 - 6 + 1
    assert stats["kept"] == 6
    assert (
        stats["read"]
        == stats["kept"] + stats["empty"] + stats["too_long"] + stats["ratio"] + stats["duplicate"]
    )


def test_length_ratio_filter(tmp_path):
    corpus = tmp_path / "corpus"
    words = "house tree river stone cloud field road bird light water".split()
    src = [" ".join(words[i % 7 : i % 7 + 4]) for i in range(50)] + ["house"]
    tgt = [" ".join(words[i % 7 : i % 7 + 4]) for i in range(50)] + [" ".join(words)]
    write_pair(corpus, "train", src, tgt)
    write_pair(corpus, "valid", src[:3], tgt[:3])
    recipe = recipe_for(
        corpus, tmp_path / "run", tokenizer={"vocab_size": 30}, filter={"max_ratio": 3.0}
    )
    stats = preprocess(recipe)["filter"]
    assert stats["ratio"] == 1 and stats["kept"] == 50


def test_refuses_to_overwrite_without_force(tmp_path, small_corpus):
    recipe = recipe_for(small_corpus, tmp_path / "run")
    preprocess(recipe)
    manifest = recipe.prepared_dir / "manifest.json"
    before = manifest.read_bytes()
    with pytest.raises(NmtError, match="already holds preprocessed data; use --force"):
        preprocess(recipe)
    assert manifest.read_bytes() == before
    preprocess(recipe, force=True)
    assert manifest.exists()


def test_failed_preprocess_keeps_previous_data(tmp_path, small_corpus):
    """A run that fails (here: every pair filtered) must leave the old folder untouched."""
    recipe = recipe_for(small_corpus, tmp_path / "run")
    preprocess(recipe)
    files = {p.name: p.read_bytes() for p in recipe.prepared_dir.iterdir()}
    strict = recipe_for(small_corpus, tmp_path / "run", filter={"max_len": 1})
    with pytest.raises(NmtError, match="every training pair was filtered out"):
        preprocess(strict, force=True)
    assert {p.name: p.read_bytes() for p in recipe.prepared_dir.iterdir()} == files
    # Nothing left behind but the data and the run folder's lock file.
    assert sorted(p.name for p in recipe.prepared_dir.parent.iterdir()) == [".lock", "prepared"]


def test_unequal_line_counts(tmp_path):
    corpus = tmp_path / "corpus"
    write_pair(corpus, "train", ["a", "b", "c"], ["x", "y"])
    write_pair(corpus, "valid", ["a"], ["x"])
    with pytest.raises(NmtError, match=r"train\.en has 3 lines, .*train\.de has 2"):
        preprocess(recipe_for(corpus, tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_non_utf8_names_file_and_line(tmp_path):
    corpus = tmp_path / "corpus"
    write_pair(corpus, "train", ["a", "b", "c"], ["x", "y", "z"])
    write_pair(corpus, "valid", ["a"], ["x"])
    (corpus / "train.de").write_bytes(b"x\ny\n\xff\xfez\n")
    with pytest.raises(NmtError, match=r"train\.de, line 3: not valid UTF-8"):
        preprocess(recipe_for(corpus, tmp_path / "run"))


def test_missing_and_empty_files(tmp_path):
    corpus = tmp_path / "corpus"
    write_pair(corpus, "train", ["a"], ["x"])
    with pytest.raises(NmtError, match=r"file not found: .*valid\.en"):
        preprocess(recipe_for(corpus, tmp_path / "run"))
    write_pair(corpus, "valid", [], [])
    with pytest.raises(NmtError, match="valid split needs at least one sentence pair"):
        preprocess(recipe_for(corpus, tmp_path / "run"))


def test_unreadable_file_is_one_clear_line(tmp_path, monkeypatch):
    # chmod cannot make a file unreadable for root (CI runs as root), so the operating
    # system's refusal is simulated where read_lines opens the file.
    corpus = tmp_path / "corpus"
    write_pair(corpus, "train", ["a"], ["x"])
    write_pair(corpus, "valid", ["a"], ["x"])
    real_open = open

    def refuse(path, *args, **kwargs):
        if Path(path).name == "train.de":
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("nmt.utils.files.open", refuse, raising=False)
    with pytest.raises(NmtError, match=r"cannot read .*train\.de: permission denied"):
        preprocess(recipe_for(corpus, tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_crlf_line_endings_are_stripped(tmp_path):
    path = tmp_path / "f.txt"
    path.write_bytes(b"one\r\ntwo\r\n\r\nthree")
    assert list(read_lines(path)) == ["one", "two", "", "three"]


def test_vocab_too_small_for_the_characters(tmp_path):
    corpus = tmp_path / "corpus"
    write_pair(
        corpus, "train", ["abcdefghijklmnopqrstuvwxyz"] * 5, ["ABCDEFGHIJKLMNOPQRSTUVWXYZ"] * 5
    )
    write_pair(corpus, "valid", ["a"], ["x"])
    with pytest.raises(NmtError, match="too small for the characters of this corpus; raise"):
        preprocess(recipe_for(corpus, tmp_path / "run", tokenizer={"vocab_size": 30}))


def test_vocab_too_large_is_a_clear_error(tmp_path):
    corpus = tmp_path / "corpus"
    write_pair(corpus, "train", ["a b", "b c"] * 5, ["x y", "y z"] * 5)
    write_pair(corpus, "valid", ["a"], ["x"])
    with pytest.raises(NmtError, match="tokenizer.vocab_size"):
        preprocess(recipe_for(corpus, tmp_path / "run", tokenizer={"vocab_size": 5000}))


def test_corrupted_binaries_are_reported(tmp_path, small_corpus):
    recipe = recipe_for(small_corpus, tmp_path / "run")
    preprocess(recipe)
    bin_path = recipe.prepared_dir / "train.de.bin"
    bin_path.write_bytes(bin_path.read_bytes()[:-3])
    with pytest.raises(NmtError, match="does not match"):
        TokenArray(recipe.prepared_dir / "train.de")


def test_token_batches_cover_every_sentence_within_budget():
    g = torch.Generator().manual_seed(0)
    src = torch.randint(1, 40, (500,), generator=g)
    tgt = torch.randint(1, 40, (500,), generator=g)
    batches = token_batches(src, tgt, max_tokens=256, seed=3)
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(500))
    for b in batches:
        longest = max(max(int(src[i]), int(tgt[i])) + 1 for i in b)
        assert longest * len(b) <= 256
    # Seeded: the same seed gives the same batches, another seed another order.
    assert token_batches(src, tgt, 256, seed=3) == batches
    assert token_batches(src, tgt, 256, seed=4) != batches
    # Grouped by length: the padding is a small share of the tokens.
    real = sum(int(tgt[i]) for b in batches for i in b)
    padded = sum(max(int(tgt[i]) for i in b) * len(b) for b in batches)
    assert real / padded > 0.9


def test_token_batches_rejects_sentence_longer_than_budget():
    with pytest.raises(NmtError, match="does not fit train.max_tokens=8"):
        token_batches(torch.tensor([3, 20]), torch.tensor([3, 4]), max_tokens=8)


def test_collate_layout(tmp_path, small_corpus):
    recipe = recipe_for(small_corpus, tmp_path / "run")
    preprocess(recipe)
    data = Prepared.open(recipe.prepared_dir).dataset("valid")
    batch = collate(data, [0, 1, 2])
    for row, i in enumerate([0, 1, 2]):
        s, t = data.src[i].tolist(), data.tgt[i].tolist()
        assert batch.src[row, : len(s) + 1].tolist() == s + [EOS]
        assert batch.tgt_in[row, : len(t) + 1].tolist() == [BOS] + t
        assert batch.tgt_out[row, : len(t) + 1].tolist() == t + [EOS]
        assert (batch.tgt_out[row, len(t) + 1 :] == PAD).all()
    assert batch.n_tgt_tokens == int(batch.tgt_out.ne(PAD).sum())
    assert batch.tgt_out.flatten()[batch.target_positions].ne(PAD).all()


def test_pad_multiple_rounds_shapes_keeps_budget_and_loss(tmp_path, small_corpus):
    """train.pad_multiple: lengths padded up to a multiple (fewer shapes for compiled kernels),
    the padded cost within max_tokens, and the loss of a batch unchanged by the padding."""
    from nmt.models.builder import build_model
    from nmt.training.loss import batch_loss

    g = torch.Generator().manual_seed(0)
    src, tgt = torch.randint(1, 40, (500,), generator=g), torch.randint(1, 40, (500,), generator=g)
    batches = token_batches(src, tgt, max_tokens=256, seed=3, multiple=16)
    assert sorted(i for b in batches for i in b) == list(range(500))
    for b in batches:
        longest = max(max(int(src[i]), int(tgt[i])) + 1 for i in b)
        assert -(-longest // 16) * 16 * len(b) <= 256

    recipe = recipe_for(small_corpus, tmp_path / "run")
    preprocess(recipe)
    data = Prepared.open(recipe.prepared_dir).dataset("valid")
    plain, padded = collate(data, list(range(12))), collate(data, list(range(12)), multiple=8)
    for name in ("src", "tgt_in", "tgt_out"):
        wide, narrow = getattr(padded, name), getattr(plain, name)
        assert wide.shape[1] % 8 == 0 and wide.shape[1] >= narrow.shape[1]
        assert torch.equal(wide[:, : narrow.shape[1]], narrow)
        assert (wide[:, narrow.shape[1] :] == PAD).all()
    assert padded.n_tgt_tokens == plain.n_tgt_tokens
    torch.manual_seed(0)
    model = build_model(recipe.model, 120, 120, share_all=True).double().eval()
    assert torch.allclose(batch_loss(model, padded, 0.1), batch_loss(model, plain, 0.1), rtol=1e-12)
    with pytest.raises(NmtError, match="train.pad_multiple"):
        config.from_dict(tiny_recipe(small_corpus, tmp_path / "r", train={"pad_multiple": 0}))
