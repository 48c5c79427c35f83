"""`nmt preprocess`: parallel text in; filtered, tokenized and binarized token ids out, with the
SentencePiece models and a manifest, in the run folder's `prepared/` (read by nmt.data.dataset).
"""

from __future__ import annotations

import array
import hashlib
import itertools
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from nmt import config
from nmt.config import Recipe
from nmt.data.dataset import ENCODE_CHUNK, MANIFEST, _with_suffix
from nmt.data.tokenizer import Tokenizer, train_sentencepiece
from nmt.errors import NmtError
from nmt.utils import lock
from nmt.utils.files import read_lines

log = logging.getLogger("nmt")


def read_parallel(src_path: Path, tgt_path: Path) -> Iterator[tuple[str, str]]:
    """Yield line pairs; stops with a clear error if the two files differ in length."""
    for src, tgt in itertools.zip_longest(read_lines(src_path), read_lines(tgt_path)):
        if src is None or tgt is None:
            n_src = sum(1 for _ in read_lines(src_path))
            n_tgt = sum(1 for _ in read_lines(tgt_path))
            raise NmtError(
                f"parallel files differ in length: {src_path} has {n_src} lines, "
                f"{tgt_path} has {n_tgt}; they must be line-aligned"
            )
        yield src, tgt


@dataclass
class FilterStats:
    read: int = 0
    empty: int = 0
    too_long: int = 0
    ratio: int = 0
    duplicate: int = 0
    kept: int = 0

    def summary(self) -> str:
        return (
            f"read {self.read} pairs, kept {self.kept}; removed {self.empty} empty, "
            f"{self.too_long} too long, {self.ratio} over the length ratio, "
            f"{self.duplicate} duplicates"
        )


class _Writer:
    """Appends token-id sequences to `<stem>.bin` and records offsets for `<stem>.idx`."""

    def __init__(self, stem: Path, typecode: str) -> None:
        self.stem = stem
        self.typecode = typecode
        self.file = open(_with_suffix(stem, ".bin"), "wb")  # noqa: SIM115 - closed in close()
        self.offsets = array.array("q", [0])  # 8 bytes a sentence, not a Python int each

    def add(self, seqs: Sequence[Sequence[int]]) -> None:
        for s in seqs:
            self.offsets.append(self.offsets[-1] + len(s))
        self.file.write(array.array(self.typecode, [t for s in seqs for t in s]).tobytes())

    def close(self) -> None:
        self.file.close()
        _with_suffix(self.stem, ".idx").write_bytes(self.offsets.tobytes())


def _typecode(vocab_size: int) -> str:
    """Two bytes a token while the vocabulary fits, four otherwise (array typecodes)."""
    return "h" if vocab_size <= 32767 else "i"


def _chunks(pairs: Iterator[tuple[str, str]], size: int) -> Iterator[list[tuple[str, str]]]:
    while chunk := list(itertools.islice(pairs, size)):
        yield chunk


def _paths(recipe: Recipe, split: str) -> tuple[Path, Path]:
    prefix = getattr(recipe.data, split)
    return Path(f"{prefix}.{recipe.data.src_lang}"), Path(f"{prefix}.{recipe.data.tgt_lang}")


def _check_parallel(recipe: Recipe, split: str) -> int:
    """Read a split once end to end: UTF-8, equal line counts. Returns the number of pairs."""
    src_path, tgt_path = _paths(recipe, split)
    n = sum(1 for _ in read_parallel(src_path, tgt_path))
    if n == 0:
        raise NmtError(f"{src_path} is empty: the {split} split needs at least one sentence pair")
    return n


def _build_tokenizers(
    recipe: Recipe, out: Path
) -> tuple[Tokenizer, Tokenizer, dict[str, str], bool]:
    """Train or copy the SentencePiece models into `out`; returns them, their file names and
    whether the vocabulary is joint."""
    if recipe.train.init_from:
        return _tokenizers_of_checkpoint(recipe, out)
    cfg = recipe.tokenizer
    src_lang, tgt_lang = recipe.data.src_lang, recipe.data.tgt_lang
    train_src, train_tgt = _paths(recipe, "train")
    if cfg.joint:
        name = "spm.model"
        if cfg.src_model:
            Tokenizer.from_file(cfg.src_model)  # fail early, with a clear error, if it is not one
            shutil.copyfile(cfg.src_model, out / name)
            tok = Tokenizer.from_file(out / name)
        else:
            tok = train_sentencepiece([train_src, train_tgt], out / "spm", cfg, recipe.seed)
        return tok, tok, {"src": name, "tgt": name}, True
    names = {"src": f"spm.{src_lang}.model", "tgt": f"spm.{tgt_lang}.model"}
    if cfg.src_model and cfg.tgt_model:
        for side, path in (("src", cfg.src_model), ("tgt", cfg.tgt_model)):
            Tokenizer.from_file(path)
            shutil.copyfile(path, out / names[side])
        return (
            Tokenizer.from_file(out / names["src"]),
            Tokenizer.from_file(out / names["tgt"]),
            names,
            False,
        )
    src_tok = train_sentencepiece([train_src], out / f"spm.{src_lang}", cfg, recipe.seed)
    tgt_tok = train_sentencepiece([train_tgt], out / f"spm.{tgt_lang}", cfg, recipe.seed)
    return src_tok, tgt_tok, names, False


def _tokenizers_of_checkpoint(
    recipe: Recipe, out: Path
) -> tuple[Tokenizer, Tokenizer, dict[str, str], bool]:
    """The SentencePiece models of the checkpoint train.init_from fine-tunes: the model's
    embeddings belong to them."""
    from nmt import checkpoint

    path = recipe.train.init_from
    state = checkpoint.load(path)
    trained = state["recipe"]["data"]
    pair = (trained["src_lang"], trained["tgt_lang"])
    if pair != (recipe.data.src_lang, recipe.data.tgt_lang):
        raise NmtError(
            f"train.init_from {path} translates {pair[0]}-{pair[1]}, but the recipe's data are "
            f"{recipe.data.src_lang}-{recipe.data.tgt_lang}"
        )
    joint = bool(state["recipe"]["tokenizer"]["joint"])
    names = {"src": f"spm.{pair[0]}.model", "tgt": f"spm.{pair[1]}.model"}
    # An imported Marian model has one vocabulary but a SentencePiece model per side.
    if joint and state["tokenizers"]["src"] == state["tokenizers"]["tgt"]:
        names = {"src": "spm.model", "tgt": "spm.model"}
    for side in ("src", "tgt"):
        (out / names[side]).write_bytes(state["tokenizers"][side])
    log.info(f"SentencePiece models taken from {path} (train.init_from)")
    src_tok = Tokenizer.from_file(out / names["src"])
    return src_tok, Tokenizer.from_file(out / names["tgt"]), names, joint


def _binarize(
    recipe: Recipe,
    split: str,
    src_tok: Tokenizer,
    tgt_tok: Tokenizer,
    out: Path,
    apply_filter: bool,
) -> FilterStats:
    src_path, tgt_path = _paths(recipe, split)
    flt = recipe.filter
    stats = FilterStats()
    seen: set[bytes] = set()
    writers = {
        side: _Writer(out / f"{split}.{lang}", _typecode(len(tok)))
        for side, lang, tok in (
            ("src", recipe.data.src_lang, src_tok),
            ("tgt", recipe.data.tgt_lang, tgt_tok),
        )
    }
    # Validation keeps every pair, raw, so BLEU is computed against the untouched references.
    raw = None
    if split == "valid":
        raw = {
            "src": open(out / f"valid.raw.{recipe.data.src_lang}", "w", encoding="utf-8"),
            "tgt": open(out / f"valid.raw.{recipe.data.tgt_lang}", "w", encoding="utf-8"),
        }
    try:
        for chunk in _chunks(read_parallel(src_path, tgt_path), ENCODE_CHUNK):
            stats.read += len(chunk)
            src_ids = src_tok.encode([s for s, _ in chunk])
            tgt_ids = tgt_tok.encode([t for _, t in chunk])
            kept_src, kept_tgt = [], []
            for (s, t), si, ti in zip(chunk, src_ids, tgt_ids):
                if raw is not None:
                    raw["src"].write(s + "\n")
                    raw["tgt"].write(t + "\n")
                if apply_filter:
                    if not s.strip() or not t.strip():
                        stats.empty += 1
                        continue
                    if len(si) > flt.max_len or len(ti) > flt.max_len:
                        stats.too_long += 1
                        continue
                    if max(len(si), len(ti)) > flt.max_ratio * max(min(len(si), len(ti)), 1):
                        stats.ratio += 1
                        continue
                    if flt.dedup:
                        key = hashlib.blake2b(f"{s}\t{t}".encode(), digest_size=16).digest()
                        if key in seen:
                            stats.duplicate += 1
                            continue
                        seen.add(key)
                kept_src.append(si)
                kept_tgt.append(ti)
            writers["src"].add(kept_src)
            writers["tgt"].add(kept_tgt)
            stats.kept += len(kept_src)
    finally:
        for w in writers.values():
            w.close()
        if raw is not None:
            for f in raw.values():
                f.close()
    return stats


def preprocess(recipe: Recipe, force: bool = False) -> dict:
    """Check, tokenize, filter and binarize the recipe's data into `recipe.prepared_dir`.

    Everything is written to a temporary sibling folder that replaces the old one only when
    complete, so a failure never leaves a half-written or half-overwritten folder behind. The
    run folder's lock is held meanwhile: a run training on that data is never changed under it.
    """
    with lock.hold(Path(recipe.run_dir), "preprocess"):
        return _preprocess(recipe, force)


def _preprocess(recipe: Recipe, force: bool) -> dict:
    out = recipe.prepared_dir
    if out.exists() and any(out.iterdir()) and not force:
        raise NmtError(f"{out} already holds preprocessed data; use --force to replace it")
    counts = {split: _check_parallel(recipe, split) for split in ("train", "valid")}
    log.info(f"checked {counts['train']} training and {counts['valid']} validation pairs")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise NmtError(f"cannot create {out.parent}: {e.strerror}") from None
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        src_tok, tgt_tok, names, joint = _build_tokenizers(recipe, tmp)
        log.info(f"vocabularies: source {len(src_tok)}, target {len(tgt_tok)}")
        stats = _binarize(recipe, "train", src_tok, tgt_tok, tmp, apply_filter=True)
        log.info(f"train: {stats.summary()}")
        if stats.kept == 0:
            raise NmtError(
                "every training pair was filtered out; raise filter.max_len or filter.max_ratio"
            )
        valid = _binarize(recipe, "valid", src_tok, tgt_tok, tmp, apply_filter=False)
        manifest = {
            "format": 1,
            "src_lang": recipe.data.src_lang,
            "tgt_lang": recipe.data.tgt_lang,
            "tokenizers": names,
            "vocab": {"src": len(src_tok), "tgt": len(tgt_tok)},
            "joint": joint,
            "splits": {"train": stats.kept, "valid": valid.kept},
            "filter": vars(stats),
            "settings": {
                k: config.to_dict(recipe)[k] for k in ("data", "tokenizer", "filter", "seed")
            },
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
            os.replace(out, old / out.name)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return manifest
