"""Hugging Face MarianMT models in and out: `nmt import DIR --from huggingface RUN_DIR` and
`nmt export RUN --to huggingface DIR`. Reading and writing need `safetensors` (pip install
'nmt[hf]'); `transformers` itself is needed only to run what is exported.

A MarianMT folder (what `save_pretrained` writes; OPUS-MT publishes over a thousand) holds
config.json, the weights (model.safetensors or pytorch_model.bin), source.spm and target.spm
(SentencePiece models that segment each side) and vocab.json, one vocabulary for both sides:
transformers maps each piece through it, not through SentencePiece's own ids.

Marian and nmt's Transformer compute the same function (post-norm layers, embeddings scaled by
√d, sinusoidal positions, tied output projection) up to three layouts, which the conversion
maps exactly:

    vocabulary   Marian: </s> 0, <unk> 1, ..., <pad> last, and the decoder starts from <pad>.
                 nmt: PAD 0, UNK 1, BOS 2, EOS 3. Marian's <pad> row becomes our BOS (the
                 decoder's start); our PAD is a new row that no input reads (padding is masked)
                 and the output bias keeps out of the softmax (-100: e^-100 of any logit).
                 Both SentencePiece models are rewritten so that their ids are these ids
                 (nmt.export.sentencepiece_proto).
    positions    Marian puts the sines of every frequency first, then the cosines; ours
                 interleave them. Permuting the model's hidden units, the same permutation in
                 every matrix that reads or writes the residual stream, makes one the other.
    attention    q_proj, k_proj, v_proj stacked into our in_proj (self-attention) or q_proj and
                 kv_proj (cross-attention).

Marian's final_logits_bias becomes `output_bias`, its swish activation `silu`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from nmt import checkpoint, config
from nmt.data.tokenizer import BOS, EOS, PAD, UNK, Tokenizer
from nmt.errors import NmtError
from nmt.export import sentencepiece_proto
from nmt.export.source import check_output, load_source
from nmt.models.builder import build_model, load_model
from nmt.utils.files import atomic_folder, atomic_write

IMPORT_FILE = "imported.json"  # in a run folder `nmt import` wrote: where the model came from
EXCLUDED = -100.0  # the output bias of rows that are never an output (our PAD, copies of UNK)
_ACTIVATIONS = {"swish": "silu", "silu": "silu", "relu": "relu", "gelu": "gelu"}
# Options of related architectures (BART, mBART) that Marian's layers do not have; older OPUS-MT
# configs list some of them as false.
_OTHER_LAYOUTS = (
    "normalize_before",
    "add_final_layer_norm",
    "normalize_embedding",
    "layernorm_embedding",
)


def require_safetensors() -> Any:
    try:
        import safetensors.torch
    except ImportError:
        raise NmtError("Hugging Face models need safetensors: pip install 'nmt[hf]'") from None
    return safetensors.torch


# -- import ----------------------------------------------------------------------------------


def import_marian(
    folder: str | Path,
    run_dir: str | Path,
    src_lang: str | None = None,
    tgt_lang: str | None = None,
) -> Path:
    """Write a run folder (recipe.yaml, best.pt, imported.json) holding the MarianMT model of
    `folder`; `nmt translate`, `nmt serve`, `nmt export` and a recipe's train.init_from take it
    as they take a trained run (`nmt tune` needs the validation data of a fine-tuned run). Everything is read and checked before
    anything is written, and the folder is built beside `run_dir` and renamed into place."""
    folder, run_dir = Path(folder), Path(run_dir)
    if not folder.is_dir():
        raise NmtError(f"not a folder: {folder}")
    if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        raise NmtError(f"{run_dir} exists and is not empty; import into a new folder")
    hf = _read_config(folder)
    languages = _languages(folder, src_lang, tgt_lang)
    vocab = _read_vocab(folder)
    weights = _read_weights(folder)
    state, model_cfg = convert_marian(hf, vocab, weights, folder)
    recipe = config.from_dict(
        {
            "name": f"imported-{folder.name}",
            "run_dir": str(run_dir.resolve()),
            "data": {
                "src_lang": languages[0],
                "tgt_lang": languages[1],
                # An imported model has no data of its own; a fine-tuning recipe names its own.
                "train": f"(imported from {folder})",
                "valid": f"(imported from {folder})",
            },
            "tokenizer": {"joint": True, "vocab_size": state["model_args"]["tgt_vocab"]},
            "model": dataclasses.asdict(model_cfg),
            "decode": _decode_settings(folder, hf),
        }
    )
    state["recipe"] = config.to_dict(recipe)
    recipe = load_model(state, folder)[0]  # the run as nmt will read it back
    origin = {
        "from": str(folder.resolve()),
        "format": "huggingface-marian",
        "architectures": hf.get("architectures"),
    }
    if run_dir.is_dir():
        run_dir.rmdir()  # empty (checked above); replaced by the folder built beside it
    with atomic_folder(run_dir) as building:
        checkpoint.save(state, building / "best.pt")
        config.dump(recipe, building / "recipe.yaml")
        with atomic_write(building / IMPORT_FILE) as f:
            f.write(json.dumps(origin, indent=2) + "\n")
    return run_dir


def _read_json(path: Path, what: str) -> dict:
    try:
        tree = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise NmtError(f"{path.parent} has no {path.name}; {what}") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise NmtError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(tree, dict):
        raise NmtError(f"{path} must hold a JSON object")
    return tree


def _read_config(folder: Path) -> dict:
    hf = _read_json(folder / "config.json", "not a Hugging Face model folder")
    kind = hf.get("model_type")
    if kind != "marian":
        raise NmtError(
            f"{folder}/config.json describes a {kind or 'model of unknown type'!s} model "
            f"({', '.join(hf.get('architectures') or []) or 'no architectures'}); nmt imports "
            "MarianMT models (model_type marian) only"
        )
    return hf


def _languages(folder: Path, src: str | None, tgt: str | None) -> tuple[str, str]:
    path = folder / "tokenizer_config.json"
    saved = _read_json(path, "") if path.is_file() else {}
    src = src or saved.get("source_lang")
    tgt = tgt or saved.get("target_lang")
    if not src or not tgt:
        raise NmtError(
            f"{folder} does not say its languages (tokenizer_config.json has no source_lang / "
            "target_lang); give them with --src-lang and --tgt-lang"
        )
    if src == tgt:
        raise NmtError(
            f"source and target language are both '{src}'; give --src-lang and --tgt-lang"
        )
    return str(src), str(tgt)


def _read_vocab(folder: Path) -> dict[str, int]:
    for name in ("source.spm", "target.spm"):
        if not (folder / name).is_file():
            raise NmtError(f"{folder} has no {name} (the SentencePiece model of each side)")
    if (folder / "target_vocab.json").is_file():
        raise NmtError(
            f"{folder} has separate source and target vocabularies (target_vocab.json); nmt "
            "imports Marian models with one shared vocabulary only"
        )
    vocab = _read_json(folder / "vocab.json", "a Marian model needs its vocabulary")
    ids = sorted(vocab.values()) if all(isinstance(v, int) for v in vocab.values()) else None
    if ids != list(range(len(vocab))):
        raise NmtError(
            f"{folder}/vocab.json must map pieces to the ids 0..{len(vocab) - 1}, each once"
        )
    codes = [piece for piece in vocab if piece.startswith(">>") and piece.endswith("<<")]
    if codes:
        raise NmtError(
            f"{folder} is a multilingual Marian model (target-language tokens such as "
            f"{codes[0]}); nmt imports models of one language pair only"
        )
    for piece in ("<unk>", "</s>"):
        if piece not in vocab:
            raise NmtError(f"{folder}/vocab.json has no {piece}")
    return vocab


def _read_weights(folder: Path) -> dict[str, torch.Tensor]:
    names = sorted(p.name for p in folder.glob("*.safetensors"))
    if names:
        st = require_safetensors()
        weights: dict[str, torch.Tensor] = {}
        for name in names:
            try:
                weights.update(st.load_file(folder / name))
            except Exception as e:  # safetensors raises its own SafetensorError
                raise NmtError(
                    f"{folder / name} is not a readable safetensors file ({e})"
                ) from None
        return weights
    path = folder / "pytorch_model.bin"
    if not path.is_file():
        raise NmtError(f"{folder} has no weights (model.safetensors or pytorch_model.bin)")
    try:
        weights = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a corrupt or foreign pickle fails in many ways
        raise NmtError(f"{path} is not a readable PyTorch weights file ({e})") from None
    if not isinstance(weights, dict):
        raise NmtError(f"{path} does not hold a state dict")
    return weights


def _decode_settings(folder: Path, hf: dict) -> dict:
    """The publisher's beam size, if generation_config.json (or, in older folders, config.json)
    names one."""
    path = folder / "generation_config.json"
    beams = _read_json(path, "").get("num_beams") if path.is_file() else None
    beams = beams or hf.get("num_beams")
    return {"beam_size": int(beams)} if isinstance(beams, int) and beams > 1 else {}


def _hidden_order(d_model: int) -> torch.Tensor:
    """Marian's hidden unit for each of ours: ours[2i] is sin of frequency i, which Marian keeps
    at i; ours[2i + 1] is its cosine, at d/2 + i."""
    half = d_model // 2
    order = torch.empty(d_model, dtype=torch.long)
    order[0::2] = torch.arange(half)
    order[1::2] = torch.arange(half) + half
    return order


def _sublayers(cfg: config.ModelConfig) -> Iterator[tuple[str, str, str]]:
    """(kind, our name, Marian's name without "model.") of every sublayer, the one table both
    directions follow; kind: self_attention, cross_attention, norm or feed_forward."""
    for i in range(cfg.encoder_layers):
        ours, theirs = f"encoder_layers.{i}", f"encoder.layers.{i}"
        yield "self_attention", f"{ours}.self_attn", f"{theirs}.self_attn"
        yield "norm", f"{ours}.attn_block.norm", f"{theirs}.self_attn_layer_norm"
        yield "feed_forward", f"{ours}.ff", theirs
        yield "norm", f"{ours}.ff_block.norm", f"{theirs}.final_layer_norm"
    for i in range(cfg.decoder_layers):
        ours, theirs = f"decoder_layers.{i}", f"decoder.layers.{i}"
        yield "self_attention", f"{ours}.self_attn", f"{theirs}.self_attn"
        yield "norm", f"{ours}.self_block.norm", f"{theirs}.self_attn_layer_norm"
        yield "cross_attention", f"{ours}.cross_attn", f"{theirs}.encoder_attn"
        yield "norm", f"{ours}.cross_block.norm", f"{theirs}.encoder_attn_layer_norm"
        yield "feed_forward", f"{ours}.ff", theirs
        yield "norm", f"{ours}.ff_block.norm", f"{theirs}.final_layer_norm"


def _model_config(hf: dict, folder: Path) -> config.ModelConfig:
    for key in _OTHER_LAYOUTS:
        if hf.get(key):
            raise NmtError(
                f"{folder}/config.json sets {key}, which Marian's layers do not have; "
                "this model cannot be imported"
            )
    pad = hf.get("pad_token_id")
    checks = [
        (
            "encoder_attention_heads == decoder_attention_heads",
            hf.get("encoder_attention_heads") == hf.get("decoder_attention_heads"),
        ),
        (
            "encoder_ffn_dim == decoder_ffn_dim",
            hf.get("encoder_ffn_dim") == hf.get("decoder_ffn_dim"),
        ),
        ("scale_embedding", hf.get("scale_embedding", False) is True),
        ("share_encoder_decoder_embeddings", hf.get("share_encoder_decoder_embeddings", True)),
        ("tie_word_embeddings", hf.get("tie_word_embeddings", True)),
        (
            "activation_function in swish, silu, relu, gelu",
            hf.get("activation_function") in _ACTIVATIONS,
        ),
        ("decoder_start_token_id == pad_token_id", hf.get("decoder_start_token_id", pad) == pad),
        ("an even d_model", isinstance(hf.get("d_model"), int) and hf["d_model"] % 2 == 0),
    ]
    failed = [name for name, ok in checks if not ok]
    if failed:
        raise NmtError(
            f"{folder}/config.json: a Marian variant nmt does not support "
            f"(needs {'; '.join(failed)})"
        )
    try:
        cfg = config.ModelConfig(
            arch="transformer",
            d_model=hf["d_model"],
            heads=hf["encoder_attention_heads"],
            ff_dim=hf["encoder_ffn_dim"],
            encoder_layers=hf["encoder_layers"],
            decoder_layers=hf["decoder_layers"],
            dropout=float(hf.get("dropout", 0.1)),
            attention_dropout=float(hf.get("attention_dropout", 0.0)),
            activation_dropout=float(hf.get("activation_dropout", 0.0)),
            activation=_ACTIVATIONS[hf["activation_function"]],
            norm="post",
            attention="multihead",
            share_all_embeddings=True,
            max_positions=hf["max_position_embeddings"],
            output_bias=True,
        )
        cfg.validate()
    except KeyError as e:
        raise NmtError(f"{folder}/config.json has no {e.args[0]}") from None
    return cfg


def convert_marian(
    hf: dict, vocab: dict[str, int], weights: dict[str, torch.Tensor], folder: Path
) -> tuple[dict, config.ModelConfig]:
    """A checkpoint mapping (recipe to be added) and the model configuration of a Marian
    model's config, vocabulary and weights."""
    cfg = _model_config(hf, folder)
    weights = {k.removeprefix("model."): v for k, v in weights.items()}
    shared = weights.get("shared.weight", weights.get("encoder.embed_tokens.weight"))
    if shared is None:
        raise NmtError(
            f"{folder}: no embedding matrix (model.shared.weight) among the weights; "
            "not a MarianMT model"
        )
    if shared.shape != (len(vocab), cfg.d_model) or hf.get("vocab_size") != len(vocab):
        raise NmtError(
            f"{folder}/vocab.json has {len(vocab)} pieces but the weights' embedding is "
            f"{tuple(shared.shape)} and config.json says vocab_size {hf.get('vocab_size')}; "
            "the vocabulary does not belong to these weights"
        )
    models = {name: _read_bytes(folder / name) for name in ("source.spm", "target.spm")}
    pieces, rows = _vocabulary(hf, vocab, models, folder)
    tokenizers = _tokenizers(models, pieces, folder)
    used = {
        "shared.weight",
        "encoder.embed_tokens.weight",
        "decoder.embed_tokens.weight",
        "encoder.embed_positions.weight",
        "decoder.embed_positions.weight",
        "lm_head.weight",
        "final_logits_bias",
    }
    hidden = _hidden_order(cfg.d_model)
    model = build_model(cfg, len(pieces), len(pieces), share_all=True)
    ours: dict[str, torch.Tensor] = {}

    def take(name: str) -> torch.Tensor:
        if name not in weights:
            raise NmtError(
                f"{folder}: weight model.{name} is missing; not a complete MarianMT model"
            )
        used.add(name)
        return weights[name].float()

    def reads(name: str) -> torch.Tensor:  # a linear layer reading the residual stream
        return take(name)[:, hidden]

    def norm(ours_name: str, hf_name: str) -> None:
        ours[f"{ours_name}.weight"] = take(f"{hf_name}.weight")[hidden]
        ours[f"{ours_name}.bias"] = take(f"{hf_name}.bias")[hidden]

    def attention(ours_name: str, hf_name: str, cross: bool) -> None:
        q, k, v = (reads(f"{hf_name}.{p}_proj.weight") for p in "qkv")
        qb, kb, vb = (take(f"{hf_name}.{p}_proj.bias") for p in "qkv")
        if cross:
            ours[f"{ours_name}.q_proj.weight"], ours[f"{ours_name}.q_proj.bias"] = q, qb
            ours[f"{ours_name}.kv_proj.weight"] = torch.cat([k, v])
            ours[f"{ours_name}.kv_proj.bias"] = torch.cat([kb, vb])
        else:
            ours[f"{ours_name}.in_proj.weight"] = torch.cat([q, k, v])
            ours[f"{ours_name}.in_proj.bias"] = torch.cat([qb, kb, vb])
        ours[f"{ours_name}.out_proj.weight"] = take(f"{hf_name}.out_proj.weight")[hidden]
        ours[f"{ours_name}.out_proj.bias"] = take(f"{hf_name}.out_proj.bias")[hidden]

    def feed_forward(ours_name: str, hf_name: str) -> None:
        ours[f"{ours_name}.fc1.weight"] = reads(f"{hf_name}.fc1.weight")
        ours[f"{ours_name}.fc1.bias"] = take(f"{hf_name}.fc1.bias")
        ours[f"{ours_name}.fc2.weight"] = take(f"{hf_name}.fc2.weight")[hidden]
        ours[f"{ours_name}.fc2.bias"] = take(f"{hf_name}.fc2.bias")[hidden]

    for kind, ours_name, hf_name in _sublayers(cfg):
        if kind == "norm":
            norm(ours_name, hf_name)
        elif kind == "feed_forward":
            feed_forward(ours_name, hf_name)
        else:
            attention(ours_name, hf_name, cross=kind == "cross_attention")
    unknown = sorted(set(weights) - used)
    if unknown:
        raise NmtError(
            f"{folder}: weights a MarianMT model does not have ({', '.join(unknown[:3])}"
            f"{', ...' if len(unknown) > 3 else ''}); a Marian variant nmt does not "
            "support"
        )
    embedding = shared.float()[:, hidden]
    table = torch.zeros(len(pieces), cfg.d_model)
    known = torch.tensor([r if r is not None else 0 for r in rows])
    table[:] = embedding.index_select(0, known)
    table[PAD] = 0.0
    for name in ("tgt_embed.weight", "src_embed.weight", "output_projection.weight"):
        ours[name] = table
    bias = weights.get("final_logits_bias")
    bias = torch.zeros(len(vocab)) if bias is None else bias.float().reshape(-1)
    ours["output_bias"] = bias.index_select(0, known)
    excluded = [i for i, r in enumerate(rows) if r is None or (i != UNK and r == rows[UNK])]
    ours["output_bias"][excluded] = EXCLUDED
    try:
        model.load_state_dict(ours)
    except RuntimeError as e:
        detail = next((line.strip() for line in str(e).splitlines()[1:] if line.strip()), str(e))
        raise NmtError(
            f"{folder}: the weights do not fit the model config.json describes ({detail[:200]})"
        ) from None
    state = {
        "model": model.state_dict(),
        "model_args": {"src_vocab": len(pieces), "tgt_vocab": len(pieces), "share_all": True},
        "tokenizers": tokenizers,
        "step": 0,
    }
    return state, cfg


def _vocabulary(
    hf: dict, vocab: dict[str, int], models: dict[str, bytes], folder: Path
) -> tuple[list[str], list[int | None]]:
    """Our pieces in id order, and for each the Marian row it takes (None: our new PAD row).

    Pieces of the SentencePiece models that vocab.json lacks (transformers maps them to <unk>)
    are appended as copies of the <unk> row, so that they read as <unk> does."""
    by_id = sorted(vocab, key=vocab.get)
    pad, eos, unk = hf.get("pad_token_id"), hf.get("eos_token_id"), vocab["<unk>"]
    if not isinstance(pad, int) or not 0 <= pad < len(vocab):
        raise NmtError(f"{folder}/config.json: pad_token_id {pad!r} is not in the vocabulary")
    if eos != vocab["</s>"]:
        raise NmtError(f"{folder}/config.json: eos_token_id {eos!r} is not </s>'s id in vocab.json")
    # The special rows are never produced by SentencePiece, so only their names must not clash
    # with an ordinary piece's. Marian's <pad> row is our BOS and is named <s>, as nmt's are.
    names = set(vocab) - {by_id[pad], by_id[eos], by_id[unk]}
    pieces = [_free_name("<pad>", names), "<unk>", _free_name("<s>", names), "</s>"]
    rows: list[int | None] = [None, unk, pad, eos]
    for i, piece in enumerate(by_id):
        if i not in (pad, eos, unk):
            pieces.append(piece)
            rows.append(i)
    seen = set(pieces)
    for proto in models.values():
        for piece in sentencepiece_proto.read_pieces(proto):
            if piece.text not in seen and piece.type not in (
                sentencepiece_proto.CONTROL,
                sentencepiece_proto.UNKNOWN,
            ):
                seen.add(piece.text)
                pieces.append(piece.text)
                rows.append(unk)
    return pieces, rows


def _free_name(name: str, taken: set[str]) -> str:
    while name in taken:
        name = f"<{name.strip('<>')}_>"
    return name


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise NmtError(f"cannot read {path}: {e.strerror or e}") from None


def _tokenizers(models: dict[str, bytes], pieces: list[str], folder: Path) -> dict[str, bytes]:
    """Both SentencePiece models (`models`, by file name) with `pieces` as their ids."""
    specials = {
        "pad": (PAD, pieces[PAD]),
        "unk": (UNK, pieces[UNK]),
        "bos": (BOS, pieces[BOS]),
        "eos": (EOS, pieces[EOS]),
    }
    protos = {}
    for side, name in (("src", "source.spm"), ("tgt", "target.spm")):
        proto = sentencepiece_proto.reorder(models[name], pieces, specials)
        try:
            Tokenizer(proto)
        except NmtError as e:
            raise NmtError(f"{folder / name}: {e}") from None
        protos[side] = proto
    return protos


# -- export ----------------------------------------------------------------------------------


def export_marian(path: str | Path, out_dir: str | Path, force: bool = False) -> Path:
    """Write the model of a checkpoint or run folder as a MarianMT folder that
    `transformers.MarianMTModel.from_pretrained` and `MarianTokenizer.from_pretrained` load."""
    st = require_safetensors()
    out_dir = Path(out_dir)
    ours = (out_dir / "config.json").is_file() and (out_dir / "nmt_export.json").is_file()
    check_output(out_dir, ours, force)
    source, state, recipe, model, src_tok, tgt_tok, decode = load_source(path)
    hf, weights = marian_weights(recipe.model, model, state["model_args"])
    if src_tok.id_pieces(range(len(src_tok))) != tgt_tok.id_pieces(range(len(tgt_tok))):
        raise NmtError(
            "MarianMT shares one vocabulary between the sides; this model has two "
            "(tokenizer.joint: false)"
        )
    vocab = {piece: i for i, piece in enumerate(tgt_tok.id_pieces(range(len(tgt_tok))))}
    generation = {
        "decoder_start_token_id": BOS,
        "eos_token_id": EOS,
        "pad_token_id": PAD,
        "forced_eos_token_id": EOS,
        "bad_words_ids": [[PAD], [BOS]],
        "num_beams": decode.beam_size if decode.method == "beam" else 1,
        "max_length": recipe.model.max_positions,
    }
    tokenizer_config = {
        "tokenizer_class": "MarianTokenizer",
        "source_lang": recipe.data.src_lang,
        "target_lang": recipe.data.tgt_lang,
        "unk_token": "<unk>",
        "eos_token": "</s>",
        "pad_token": "<pad>",
        "model_max_length": recipe.model.max_positions - 1,
        "separate_vocabs": False,
    }
    step = state.get("step", 0)
    origin = {"format": "huggingface", "checkpoint": str(source.resolve()), "step": step}
    files = {
        "config.json": hf,
        "generation_config.json": generation,
        "vocab.json": vocab,
        "tokenizer_config.json": tokenizer_config,
        "nmt_export.json": origin,
    }
    with atomic_folder(out_dir) as building:
        st.save_file(weights, building / "model.safetensors", metadata={"format": "pt"})
        for name, tree in files.items():
            with atomic_write(building / name) as f:
                f.write(json.dumps(tree, indent=2, ensure_ascii=False) + "\n")
        (building / "source.spm").write_bytes(src_tok.proto)
        (building / "target.spm").write_bytes(tgt_tok.proto)
    return out_dir


def marian_weights(
    cfg: config.ModelConfig, model: torch.nn.Module, args: dict
) -> tuple[dict, dict[str, torch.Tensor]]:
    """MarianMT's config.json and weights for one of our Transformers (the inverse of
    `convert_marian`), or an NmtError naming what has no MarianMT equivalent."""
    problems = []
    if cfg.arch != "transformer":
        problems.append(f"model.arch is {cfg.arch}")
    if cfg.norm != "post":
        problems.append("model.norm is pre (MarianMT's layers are post-norm)")
    if cfg.attention != "multihead":
        problems.append("the attention is not multihead everywhere")
    if not args["share_all"]:
        problems.append(
            "the source embedding is not shared (model.share_all_embeddings and a joint vocabulary)"
        )
    if cfg.d_model % 2:
        problems.append("model.d_model is odd")
    if problems:
        raise NmtError("this model has no MarianMT equivalent: " + "; ".join(problems))
    back = torch.argsort(_hidden_order(cfg.d_model))  # Marian's unit j is ours back[j]
    sd = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    out: dict[str, torch.Tensor] = {}

    def writes(name: str) -> torch.Tensor:
        return sd[name][back]

    def attention(hf_name: str, ours_name: str, cross: bool) -> None:
        if cross:
            q, qb = sd[f"{ours_name}.q_proj.weight"], sd[f"{ours_name}.q_proj.bias"]
            k, v = sd[f"{ours_name}.kv_proj.weight"].chunk(2)
            kb, vb = sd[f"{ours_name}.kv_proj.bias"].chunk(2)
        else:
            q, k, v = sd[f"{ours_name}.in_proj.weight"].chunk(3)
            qb, kb, vb = sd[f"{ours_name}.in_proj.bias"].chunk(3)
        for p, w, b in (("q", q, qb), ("k", k, kb), ("v", v, vb)):
            out[f"model.{hf_name}.{p}_proj.weight"] = w[:, back].contiguous()
            out[f"model.{hf_name}.{p}_proj.bias"] = b.contiguous()
        out[f"model.{hf_name}.out_proj.weight"] = writes(f"{ours_name}.out_proj.weight")
        out[f"model.{hf_name}.out_proj.bias"] = writes(f"{ours_name}.out_proj.bias")

    def norm(hf_name: str, ours_name: str) -> None:
        out[f"model.{hf_name}.weight"] = writes(f"{ours_name}.weight")
        out[f"model.{hf_name}.bias"] = writes(f"{ours_name}.bias")

    def feed_forward(hf_name: str, ours_name: str) -> None:
        out[f"model.{hf_name}.fc1.weight"] = sd[f"{ours_name}.fc1.weight"][:, back].contiguous()
        out[f"model.{hf_name}.fc1.bias"] = sd[f"{ours_name}.fc1.bias"]
        out[f"model.{hf_name}.fc2.weight"] = writes(f"{ours_name}.fc2.weight")
        out[f"model.{hf_name}.fc2.bias"] = writes(f"{ours_name}.fc2.bias")

    for kind, ours_name, hf_name in _sublayers(cfg):
        if kind == "norm":
            norm(hf_name, ours_name)
        elif kind == "feed_forward":
            feed_forward(hf_name, ours_name)
        else:
            attention(hf_name, ours_name, cross=kind == "cross_attention")
    vocab = args["tgt_vocab"]
    out["model.shared.weight"] = sd["tgt_embed.weight"][:, back].contiguous()
    bias = sd.get("output_bias", torch.zeros(vocab))
    out["final_logits_bias"] = bias.reshape(1, vocab).contiguous()
    activation = {"silu": "swish", "relu": "relu", "gelu": "gelu"}[cfg.activation]
    hf = {
        "architectures": ["MarianMTModel"],
        "model_type": "marian",
        "vocab_size": vocab,
        "decoder_vocab_size": vocab,
        "d_model": cfg.d_model,
        "encoder_layers": cfg.encoder_layers,
        "decoder_layers": cfg.decoder_layers,
        "encoder_attention_heads": cfg.heads,
        "decoder_attention_heads": cfg.heads,
        "encoder_ffn_dim": cfg.ff_dim,
        "decoder_ffn_dim": cfg.ff_dim,
        "activation_function": activation,
        "dropout": cfg.dropout,
        "attention_dropout": cfg.attention_dropout,
        "activation_dropout": cfg.activation_dropout,
        "max_position_embeddings": cfg.max_positions,
        "scale_embedding": True,
        "share_encoder_decoder_embeddings": True,
        "tie_word_embeddings": True,
        "pad_token_id": PAD,
        "eos_token_id": EOS,
        "decoder_start_token_id": BOS,
        "forced_eos_token_id": EOS,
        "is_encoder_decoder": True,
        "init_std": 1 / math.sqrt(cfg.d_model),
    }
    return hf, out
