"""`nmt import` at OPUS-MT's size: a MarianMT model with opus-mt-en-de's shape (d_model 512, 6+6
layers, 8 heads, ff 2048, swish, a 58,101-entry vocabulary) and random weights, built with
transformers, imported through the command line; prints the folder's size, the import's wall
time and the largest per-token difference between nmt's and transformers' log-probabilities of
16 reference translations.

    python data/make_toy.py && python bench/hf_import.py WORK_DIR      (needs pip install 'nmt[hf]')
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import sentencepiece as spm
import torch
from transformers import MarianConfig, MarianMTModel, MarianTokenizer

from nmt.decoding.translator import Translator

TOY = Path(__file__).resolve().parent.parent / "data" / "toy"


def build(out: Path) -> None:
    out.mkdir(parents=True)
    for side, lang in (("source", "en"), ("target", "de")):
        spm.SentencePieceTrainer.train(
            input=str(TOY / f"train.{lang}"), model_prefix=str(out / side), vocab_size=100,
            model_type="unigram", unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2,
        )  # fmt: skip
        (out / f"{side}.model").rename(out / f"{side}.spm")
    pieces = ["</s>", "<unk>"]
    for side in ("source", "target"):
        sp = spm.SentencePieceProcessor(model_file=str(out / f"{side}.spm"))
        for i in range(sp.get_piece_size()):
            if sp.id_to_piece(i) not in pieces and not (sp.is_control(i) or sp.is_unknown(i)):
                pieces.append(sp.id_to_piece(i))
    pieces += [f"▁filler{i}" for i in range(58100 - len(pieces))]  # opus-mt-en-de's size
    pieces.append("<pad>")
    (out / "vocab.json").write_text(json.dumps({p: i for i, p in enumerate(pieces)}))
    V = len(pieces)
    cfg = MarianConfig(
        vocab_size=V, decoder_vocab_size=V, d_model=512, encoder_layers=6, decoder_layers=6,
        encoder_attention_heads=8, decoder_attention_heads=8, encoder_ffn_dim=2048,
        decoder_ffn_dim=2048, max_position_embeddings=512, pad_token_id=V - 1, eos_token_id=0,
        decoder_start_token_id=V - 1, forced_eos_token_id=0, activation_function="swish",
        scale_embedding=True,
    )  # fmt: skip
    torch.manual_seed(0)
    MarianMTModel(cfg).eval().save_pretrained(out)
    MarianTokenizer(
        str(out / "source.spm"), str(out / "target.spm"), str(out / "vocab.json"),
        source_lang="en", target_lang="de",
    ).save_pretrained(out)  # fmt: skip


def main(work: Path) -> None:
    model_dir, run = work / "opus-shaped", work / "run"
    if not model_dir.exists():
        build(model_dir)
    print(f"folder: {sum(p.stat().st_size for p in model_dir.iterdir()) / 1e6:.0f} MB")
    shutil.rmtree(run, ignore_errors=True)
    started = time.perf_counter()
    subprocess.run(["nmt", "import", str(model_dir), str(run), "--from", "huggingface"], check=True)
    print(f"nmt import: {time.perf_counter() - started:.1f} s")
    src = (TOY / "test.en").read_text(encoding="utf-8").splitlines()[:16]
    tgt = (TOY / "test.de").read_text(encoding="utf-8").splitlines()[:16]
    model = MarianMTModel.from_pretrained(model_dir).eval()
    tok = MarianTokenizer.from_pretrained(model_dir)
    batch = tok(src, text_target=tgt, return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = model(**batch).logits
    theirs = torch.log_softmax(logits, -1).gather(-1, batch["labels"][..., None])[..., 0]
    worst = 0.0
    for i, score in enumerate(Translator.load(run).score_references(src, tgt)):
        n = int(batch["labels"][i].ne(tok.pad_token_id).sum())
        worst = max(worst, abs(score.score - float(theirs[i, :n].sum())) / n)
    print(f"largest |nmt - transformers| log-probability per token: {worst:.2e}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
