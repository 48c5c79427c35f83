"""Models from what describes them: a recipe's `model` section (`build_model`), or a loaded
checkpoint, whose recipe, weights and tokenizers rebuild the model it was saved from
(`load_model`). The one place that names every architecture."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from nmt import config
from nmt.config import ModelConfig
from nmt.data.tokenizer import Tokenizer
from nmt.errors import NmtError
from nmt.models.base import EncoderDecoder
from nmt.models.rnn import RNNModel
from nmt.models.transformer import Transformer


def build_model(
    cfg: ModelConfig, src_vocab: int, tgt_vocab: int, share_all: bool
) -> EncoderDecoder:
    """The architecture the recipe names, untrained. `share_all`: one embedding matrix for the
    source, the target and the output projection (needs one joint vocabulary)."""
    if cfg.arch == "rnn":
        return RNNModel(cfg, src_vocab, tgt_vocab, share_all)
    return Transformer(cfg, src_vocab, tgt_vocab, share_all)


def load_model(
    state: dict[str, Any], path: Path | str = "checkpoint"
) -> tuple[config.Recipe, torch.nn.Module, Any, Any]:
    """Rebuild the recipe, the model (weights loaded) and both tokenizers from a loaded
    checkpoint."""
    try:
        recipe = config.from_dict(state["recipe"])
    except NmtError as e:
        raise NmtError(f"{path}: its recipe is invalid for this nmt ({e})") from None
    src_tok = Tokenizer(state["tokenizers"]["src"])
    tgt_tok = Tokenizer(state["tokenizers"]["tgt"])
    args = state["model_args"]
    if (args["src_vocab"], args["tgt_vocab"]) != (len(src_tok), len(tgt_tok)):
        raise NmtError(
            f"{path}: its SentencePiece models have {len(src_tok)}/{len(tgt_tok)} pieces but the "
            f"model was built for {args['src_vocab']}/{args['tgt_vocab']}"
        )
    model = build_model(recipe.model, args["src_vocab"], args["tgt_vocab"], args["share_all"])
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        # The first line only says "Error(s) in loading state_dict"; the next one says which.
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        first = lines[1] if len(lines) > 1 else lines[0]
        first = first if len(first) < 200 else first[:200] + "..."
        raise NmtError(
            f"{path}: weights do not match the model its recipe describes ({first})"
        ) from None
    return recipe, model, src_tok, tgt_tok
