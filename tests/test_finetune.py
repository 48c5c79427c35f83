"""Fine-tuning (`train.init_from`): a model trained without a word learns it from a small
in-domain slice; preprocessing takes the checkpoint's SentencePiece models; a mismatched
architecture or language pair is one clear line."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import tiny_recipe

from nmt import checkpoint, config
from nmt.data.preprocess import preprocess
from nmt.decoding.translator import Translator
from nmt.errors import NmtError
from nmt.score import score_lines
from nmt.training import loop as train
from nmt.utils import files

WORD = "teacher"  # the in-domain word: its characters occur elsewhere, the word does not
MODEL = {
    "d_model": 64,
    "heads": 4,
    "ff_dim": 128,
    "encoder_layers": 2,
    "decoder_layers": 2,
    "dropout": 0.0,
}


def _split(toy: Path, out: Path) -> None:
    """out/general: the toy corpus without WORD; out/domain: only pairs with WORD."""
    for split in ("train", "valid", "test"):
        pairs = list(
            zip(files.read_lines(toy / f"{split}.en"), files.read_lines(toy / f"{split}.de"))
        )
        for name, keep in (("general", False), ("domain", True)):
            chosen = [(s, t) for s, t in pairs if (WORD in s.split()) == keep]
            (out / name).mkdir(parents=True, exist_ok=True)
            for lang, column in (("en", 0), ("de", 1)):
                text = "".join(pair[column] + "\n" for pair in chosen[:400])
                (out / name / f"{split}.{lang}").write_text(text, encoding="utf-8")


def _bleu(run: Path, corpus: Path) -> float:
    translator = Translator.load(run / "best.pt", method="greedy")
    src = list(files.read_lines(corpus / "test.en"))
    ref = list(files.read_lines(corpus / "test.de"))
    return score_lines(translator.translate(src), [ref])[0].score


@pytest.mark.slow
def test_fine_tuning_on_an_in_domain_slice_improves_it(tmp_path, toy_corpus):
    _split(toy_corpus, tmp_path / "data")
    general, domain = tmp_path / "data" / "general", tmp_path / "data" / "domain"
    base = config.from_dict(
        tiny_recipe(
            general,
            tmp_path / "base",
            tokenizer={"vocab_size": 160},
            model=MODEL,
            train={"max_steps": 250, "valid_every": 250, "lr": 0.004, "warmup_steps": 50},
            decode={"method": "greedy"},
        )
    )
    preprocess(base)
    train.train(base, progress=False)
    before = _bleu(tmp_path / "base", domain)

    tuned = config.from_dict(
        tiny_recipe(
            domain,
            tmp_path / "tuned",
            tokenizer={"vocab_size": 160},
            model={**MODEL, "dropout": 0.1},  # regularisation may change, shapes may not
            train={
                "init_from": str(tmp_path / "base" / "best.pt"),
                "max_steps": 60,
                "valid_every": 60,
                "lr": 0.001,
                "warmup_steps": 10,
                "log_every": 1,
            },
            decode={"method": "greedy"},
        )
    )
    preprocess(tuned)
    # The checkpoint's SentencePiece models, not new ones trained on the slice.
    base_models = checkpoint.load(tmp_path / "base" / "best.pt")["tokenizers"]
    assert (tuned.prepared_dir / "spm.model").read_bytes() == base_models["src"]
    train.train(tuned, progress=False)
    after = _bleu(tmp_path / "tuned", domain)
    print(f"in-domain test BLEU: {before:.1f} before fine-tuning, {after:.1f} after")
    assert after >= before + 5


def test_mismatched_architecture_and_languages_are_refused(tmp_path, trained_run):
    base = checkpoint.load(trained_run / "best.pt")
    corpus = Path(base["recipe"]["data"]["train"]).parent
    init = {"init_from": str(trained_run / "best.pt")}
    wider = config.from_dict(
        tiny_recipe(corpus, tmp_path / "wide", model={"d_model": 64}, train=init)
    )
    preprocess(wider)
    with pytest.raises(NmtError, match=r"has model\.d_model = 32, the recipe 64; fine-tuning"):
        train.train(wider, progress=False)
    reversed_pair = config.from_dict(
        tiny_recipe(corpus, tmp_path / "rev", data={"src_lang": "de", "tgt_lang": "en"}, train=init)
    )
    with pytest.raises(NmtError, match=r"translates en-de, but the recipe's data are de-en"):
        preprocess(reversed_pair)
