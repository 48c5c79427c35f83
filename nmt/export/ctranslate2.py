"""Export a trained model to CTranslate2 (`nmt export RUN_DIR --to ctranslate2 OUT_DIR`).

The folder written holds CTranslate2's own files (model.bin, config.json, the vocabularies), the
two SentencePiece models (source.spm, target.spm) and `nmt_export.json`: the languages, the
decoding defaults of the run (as `nmt translate RUN_DIR` would use them) and the longest input
the model accepts. `nmt translate OUT_DIR` decodes such a folder with CTranslate2 (nmt.decoding.ct2).

Our weights in CTranslate2's TransformerSpec (built through its Python model-spec API):

    src_embed / tgt_embed              encoder.embeddings[0] / decoder.embeddings (scaled by √d)
    output_projection (tied)           decoder.projection (stored once, as an alias)
    output_bias (when the model has it) decoder.projection.bias
    sinusoidal_positions(...)          encoder/decoder.position_encodings.encodings, written out:
                                       ours interleave sin and cos, CTranslate2's built-in table
                                       puts all sines first
    layer i, self_attn.in_proj         self_attention.linear[0] (Q, K, V stacked, as ours)
    layer i, cross_attn.q_proj/kv_proj attention.linear[0] / attention.linear[1] (K, V stacked)
    layer i, *.out_proj                *.linear[-1]
    layer i, ff.fc1 / ff.fc2           ffn.linear_0 / ffn.linear_1 (relu, exact gelu or swish)
    attn_block / self_block.norm       self_attention.layer_norm
    cross_block.norm / ff_block.norm   attention.layer_norm / ffn.layer_norm
    encoder_norm / decoder_norm        encoder.layer_norm / decoder.layer_norm (pre-norm only)

Pre-norm or post-norm maps onto the spec's `pre_norm`; layer norms keep torch's epsilon 1e-5.
Source sentences end with EOS (`add_source_eos`), the decoder starts from BOS, and alignments
average every head of the last decoder layer's cross-attention (`alignment_heads=0`), as ours.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from nmt import config
from nmt.data.tokenizer import BOS, EOS, UNK
from nmt.decoding.ct2 import EXPORT_FILE, FORMATS, is_export, require_ctranslate2
from nmt.errors import NmtError
from nmt.export.source import check_output, load_source
from nmt.utils.files import atomic_folder, atomic_write

SOURCE_SPM, TARGET_SPM = "source.spm", "target.spm"
QUANTIZATIONS = (
    "none",
    "int8",
    "int8_float32",
    "int8_float16",
    "int8_bfloat16",
    "float16",
    "bfloat16",
)


def export(
    path: str | Path,
    out_dir: str | Path,
    to: str = "ctranslate2",
    quantization: str = "none",
    force: bool = False,
) -> Path:
    """Write the model of a checkpoint or run folder (the checkpoint `nmt translate` would use)
    into `out_dir`, in the format `to`; returns the folder. The folder is built beside
    `out_dir` and renamed into place, so an interrupted export leaves no half-written model."""
    if to not in FORMATS:
        raise NmtError(f"unknown export format '{to}'; choose from {', '.join(FORMATS)}")
    if quantization not in QUANTIZATIONS:
        raise NmtError(
            f"unknown quantization '{quantization}'; choose from {', '.join(QUANTIZATIONS)}"
        )
    out_dir = Path(out_dir)
    check_output(out_dir, out_dir.is_dir() and is_export(out_dir), force)
    require_ctranslate2()
    source, state, recipe, model, src_tok, tgt_tok, decode = load_source(path)
    check_exportable(model)
    spec = transformer_spec(model, src_tok, tgt_tok)
    spec.validate()
    spec.optimize(quantization=None if quantization == "none" else quantization)
    metadata = {
        "format": to,
        "source_lang": recipe.data.src_lang,
        "target_lang": recipe.data.tgt_lang,
        "source_tokenizer": SOURCE_SPM,
        "target_tokenizer": TARGET_SPM,
        "max_positions": recipe.model.max_positions,
        "quantization": quantization,
        "decode": dataclasses.asdict(decode),
        "checkpoint": str(source.resolve()),
        "step": state.get("step", 0),
    }
    with atomic_folder(out_dir) as building:
        spec.save(str(building))
        (building / SOURCE_SPM).write_bytes(src_tok.proto)
        (building / TARGET_SPM).write_bytes(tgt_tok.proto)
        with atomic_write(building / EXPORT_FILE) as f:
            f.write(json.dumps(metadata, indent=2) + "\n")
    return out_dir


def check_exportable(model: Any) -> None:
    """CTranslate2's TransformerSpec has scaled dot-product attention only."""
    from nmt.models.transformer import Transformer

    cfg = model.cfg
    if not isinstance(model, Transformer):
        raise NmtError(
            f"CTranslate2 runs Transformer models only; this model is model.arch {cfg.arch}, "
            "so it cannot be exported"
        )
    kinds = {site: cfg.attention_at(site) for site in config.ATTENTION_SITES}
    other = {site: kind for site, kind in kinds.items() if kind != "multihead"}
    if other:
        where = ", ".join(f"{kind} at {site}" for site, kind in other.items())
        raise NmtError(
            f"CTranslate2 runs multi-head (scaled dot-product) attention only; this model has "
            f"{where} attention, so it cannot be exported"
        )


def transformer_spec(model: Any, src_tok: Any, tgt_tok: Any) -> Any:
    """CTranslate2's TransformerSpec holding the weights of our Transformer `model`."""
    from ctranslate2.specs import common_spec, transformer_spec

    cfg = model.cfg
    pre_norm = cfg.norm == "pre"
    activation = {
        "relu": common_spec.Activation.RELU,
        "gelu": common_spec.Activation.GELU,
        "silu": common_spec.Activation.SWISH,
    }
    spec = transformer_spec.TransformerSpec.from_config(
        (cfg.encoder_layers, cfg.decoder_layers),
        cfg.heads,
        pre_norm=pre_norm,
        activation=activation[cfg.activation],
        alignment_layer=-1,
        alignment_heads=0,  # every head
    )
    positions = model.positions.numpy()
    encoder, decoder = spec.encoder, spec.decoder
    encoder.embeddings[0].weight = _array(model.src_embed.weight)
    decoder.embeddings.weight = _array(model.tgt_embed.weight)
    decoder.projection.weight = _array(model.output_projection.weight)
    if cfg.output_bias:
        decoder.projection.bias = _array(model.output_bias)
    encoder.position_encodings.encodings = positions
    decoder.position_encodings.encodings = positions
    if pre_norm:
        _layer_norm(encoder.layer_norm, model.encoder_norm)
        _layer_norm(decoder.layer_norm, model.decoder_norm)
    for layer_spec, layer in zip(encoder.layer, model.encoder_layers):
        _self_attention(layer_spec.self_attention, layer.self_attn, layer.attn_block.norm)
        _feed_forward(layer_spec.ffn, layer.ff, layer.ff_block.norm)
    for layer_spec, layer in zip(decoder.layer, model.decoder_layers):
        _self_attention(layer_spec.self_attention, layer.self_attn, layer.self_block.norm)
        cross = layer_spec.attention
        _linear(cross.linear[0], layer.cross_attn.q_proj)
        _linear(cross.linear[1], layer.cross_attn.kv_proj)
        _linear(cross.linear[2], layer.cross_attn.out_proj)
        _layer_norm(cross.layer_norm, layer.cross_block.norm)
        _feed_forward(layer_spec.ffn, layer.ff, layer.ff_block.norm)
    src_pieces = src_tok.id_pieces(range(len(src_tok)))
    tgt_pieces = tgt_tok.id_pieces(range(len(tgt_tok)))
    spec.register_source_vocabulary(src_pieces)
    spec.register_target_vocabulary(tgt_pieces)
    spec.config.unk_token = tgt_pieces[UNK]
    spec.config.bos_token = tgt_pieces[BOS]
    spec.config.eos_token = tgt_pieces[EOS]
    spec.config.decoder_start_token = tgt_pieces[BOS]
    spec.config.add_source_bos = False
    spec.config.add_source_eos = True
    spec.config.layer_norm_epsilon = 1e-5  # torch.nn.LayerNorm's
    return spec


def _array(tensor: Any) -> Any:
    return tensor.detach().float().numpy().copy()


def _linear(spec: Any, linear: Any) -> None:
    spec.weight = _array(linear.weight)
    if linear.bias is not None:
        spec.bias = _array(linear.bias)


def _layer_norm(spec: Any, norm: Any) -> None:
    spec.gamma = _array(norm.weight)
    spec.beta = _array(norm.bias)


def _self_attention(spec: Any, attention: Any, norm: Any) -> None:
    _linear(spec.linear[0], attention.in_proj)
    _linear(spec.linear[1], attention.out_proj)
    _layer_norm(spec.layer_norm, norm)


def _feed_forward(spec: Any, ff: Any, norm: Any) -> None:
    _linear(spec.linear_0, ff.fc1)
    _linear(spec.linear_1, ff.fc2)
    _layer_norm(spec.layer_norm, norm)
