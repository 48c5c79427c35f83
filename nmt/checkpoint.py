"""Checkpoints: what one file holds, how it is written and read, and how older ones are upgraded.

This module owns the schema. Every checkpoint holds

    format       FORMAT (older formats are upgraded on load, see `_upgrade`)
    model        the weights (a state_dict)
    model_args   the model's constructor arguments besides the recipe's `model` section:
                 vocabulary sizes and whether all embeddings are shared
    recipe       the resolved recipe (a plain mapping)
    tokenizers   the SentencePiece models, serialized ({"src": bytes, "tgt": bytes})
    step         the update the weights are from

and a training checkpoint (last.pt) also `train_state` (nmt.training.run.TrainState as a mapping),
`optimizer`, `scaler` and `rng`. An averaged one lists its sources in `averaged`.

`check_resumable` decides whether a run's last.pt can go on with a given recipe.

Saving is atomic (temporary file, fsync, rename), so a crash or a full disk during a save leaves
the previous checkpoint intact. Loading uses `torch.load(weights_only=True)`, which refuses
pickled code: a checkpoint can carry tensors, numbers, strings and bytes, nothing executable.
"""

from __future__ import annotations

import json
import logging
import pickle
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from nmt import config
from nmt.errors import NmtError
from nmt.utils.files import atomic_write

log = logging.getLogger("nmt")

FORMAT = 2
REQUIRED = ("format", "model", "recipe", "tokenizers")
AVERAGED = "averaged.pt"
SELECTED = "selected.json"  # which checkpoint `nmt translate RUN_DIR` uses, and why


def model_state(model: torch.nn.Module, recipe: config.Recipe, prepared: Any, step: int) -> dict:
    """The weights with everything needed to rebuild and use them (`prepared`: nmt.data.dataset.Prepared)."""
    return {
        "model": model.state_dict(),
        "model_args": {
            "src_vocab": len(prepared.src_tok),
            "tgt_vocab": len(prepared.tgt_tok),
            "share_all": bool(prepared.manifest["joint"] and recipe.model.share_all_embeddings),
        },
        "recipe": config.to_dict(recipe),
        "tokenizers": {"src": prepared.src_tok.proto, "tgt": prepared.tgt_tok.proto},
        "step": step,
    }


def training_state(
    model: torch.nn.Module,
    recipe: config.Recipe,
    prepared: Any,
    step: int,
    train_state: dict,
    optimizer_state: dict,
) -> dict:
    """A checkpoint to resume from: the model's, plus the trainer's state (`optimizer`,
    `scaler`), the loop's `train_state` and the RNG states."""
    return {
        **model_state(model, recipe, prepared, step),
        **optimizer_state,
        "train_state": train_state,
        "rng": {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        },
    }


def restore_rng(state: dict) -> None:
    rng = state.get("rng", {})
    if "torch" in rng:
        torch.set_rng_state(rng["torch"])
    if rng.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def save(state: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_write(path, "wb") as f:
            torch.save({**state, "format": FORMAT}, f)
    except OSError as e:
        raise NmtError(f"cannot write checkpoint {path}: {e.strerror or e}") from None
    except RuntimeError as e:
        if "write" not in str(e):
            raise
        # torch.save's zip writer reports a full disk as a RuntimeError.
        raise NmtError(
            f"cannot write checkpoint {path}: write failed (is the disk full?)"
        ) from None


def resolve(path: str | Path) -> Path:
    """A checkpoint file, or the one a run folder offers: the one `selected.json` names
    (written by train.average_last), else best.pt, else last.pt."""
    path = Path(path)
    if not path.is_dir():
        return path
    selection = path / SELECTED
    if selection.is_file():
        try:
            chosen = path / json.loads(selection.read_text(encoding="utf-8"))["checkpoint"]
        except (ValueError, KeyError, TypeError, OSError):
            raise NmtError(f"{selection} is corrupted; delete it to use best.pt") from None
        if chosen.is_file():
            return chosen
    for name in ("best.pt", "last.pt"):
        if (path / name).is_file():
            return path / name
    raise NmtError(f"no checkpoint (best.pt or last.pt) in the folder {path}")


def read_selection(run_dir: Path) -> dict[str, float]:
    """The validation BLEU of each candidate, as `write_selection` recorded it ({} if none)."""
    try:
        return dict(json.loads((run_dir / SELECTED).read_text(encoding="utf-8"))["valid_bleu"])
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def write_selection(run_dir: Path, chosen: str, scores: dict[str, float], reason: str) -> None:
    text = json.dumps({"checkpoint": chosen, "valid_bleu": scores, "reason": reason}, indent=2)
    with atomic_write(run_dir / SELECTED) as f:
        f.write(text + "\n")


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = resolve(path)
    if path.is_file() and not zipfile.is_zipfile(path):
        # torch.save has written zip archives since PyTorch 1.6; anything else is not ours.
        raise NmtError(f"{path} is not a readable checkpoint (not a PyTorch zip archive)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise NmtError(f"checkpoint not found: {path}") from None
    except IsADirectoryError:
        raise NmtError(f"expected a checkpoint file, found a folder: {path}") from None
    except pickle.UnpicklingError:
        raise NmtError(
            f"{path} holds objects other than weights and settings; refusing to load it "
            "(only load checkpoints you trust, written by nmt)"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise NmtError(
            f"{path} is not a readable checkpoint (truncated or corrupted?): {detail}"
        ) from None
    if not isinstance(state, dict) or any(k not in state for k in REQUIRED):
        raise NmtError(f"{path} is not an nmt checkpoint")
    if state["format"] > FORMAT:
        raise NmtError(
            f"{path} has checkpoint format {state['format']}; this nmt reads up to {FORMAT} "
            "(upgrade nmt)"
        )
    return _upgrade(state)


def _upgrade(state: dict) -> dict:
    """Bring a checkpoint of an older format to this one, step by step (as fairseq's
    `upgrade_state_dict_named` does): new code reads old runs."""
    if state["format"] == 1:
        state = _upgrade_1_to_2(state)
    return state


def _upgrade_1_to_2(state: dict) -> dict:
    """Format 1 kept no constructor arguments, the trainer's counters at the top level, each
    attention's Q/K/V in one `in_proj` and no `output_projection` of its own."""
    weights = dict(state["model"])
    recipe = state["recipe"]
    # What training used: the tokenizer's `joint` setting (format 1's loader compared the two
    # SentencePiece models instead, which untied a `joint: false` model with equal models).
    joint = recipe.get("tokenizer", {}).get("joint", True)
    share = recipe.get("model", {}).get("share_all_embeddings", True)
    for name in [n for n in weights if n.endswith("cross_attn.in_proj.weight")]:
        prefix = name.removesuffix("in_proj.weight")
        w, b = weights.pop(name), weights.pop(prefix + "in_proj.bias")
        d = w.shape[1]
        weights[prefix + "q_proj.weight"], weights[prefix + "q_proj.bias"] = w[:d], b[:d]
        weights[prefix + "kv_proj.weight"], weights[prefix + "kv_proj.bias"] = w[d:], b[d:]
    weights["output_projection.weight"] = weights["tgt_embed.weight"]
    upgraded = {key: state[key] for key in ("recipe", "tokenizers", "averaged") if key in state}
    upgraded.update(
        format=2,
        model=weights,
        model_args={
            "src_vocab": weights["src_embed.weight"].shape[0],
            "tgt_vocab": weights["tgt_embed.weight"].shape[0],
            "share_all": bool(joint and share),
        },
        step=state.get("step", 0),
    )
    if "optimizer" in state:
        nonfinite, oom = state.get("skipped", [0, 0])
        upgraded.update(
            optimizer=state["optimizer"],
            scaler=state["scaler"],
            rng=state.get("rng", {}),
            train_state={
                "step": state["step"],
                "epoch": state["epoch"],
                "epoch_updates": state.get("epoch_updates", 0),
                "best_bleu": state["best_bleu"],
                "last_bleu": state.get("last_bleu", state["best_bleu"]),
                "bad_validations": state.get("bad_validations", 0),
                "nonfinite_skipped": nonfinite,
                "oom_skipped": oom,
            },
        )
    return upgraded


def step_checkpoints(run_dir: Path) -> list[Path]:
    """The run folder's step_<N>.pt files, oldest first."""
    found = []
    for p in Path(run_dir).glob("step_*.pt"):
        suffix = p.stem.removeprefix("step_")
        if suffix.isdigit():
            found.append((int(suffix), p))
    return [p for _, p in sorted(found)]


def average(paths: list[Path]) -> dict[str, Any]:
    """The element-wise mean of the checkpoints' weights (accumulated in float64), with the
    first checkpoint's recipe, tokenizers and constructor arguments. All must share the model
    and the tokenizers."""
    if not paths:
        raise NmtError("no checkpoints to average")
    first = load(paths[0])
    sums = {k: v.double() for k, v in first["model"].items()}
    steps = [first["step"]]
    for path in paths[1:]:
        state = load(path)
        steps.append(state["step"])
        if state["recipe"]["model"] != first["recipe"]["model"]:
            raise NmtError(f"{path} has another model than {paths[0]}; only average one model")
        if not same_tokenizers(state["tokenizers"], first["tokenizers"]):
            raise NmtError(f"{path} has other tokenizers than {paths[0]}; only average one model")
        if state["model"].keys() != sums.keys():
            raise NmtError(f"{path} has other weights than {paths[0]}")
        for k, v in state["model"].items():
            sums[k] += v.double()
    model = {k: (v / len(paths)).to(first["model"][k].dtype) for k, v in sums.items()}
    return {
        "model": model,
        "model_args": first["model_args"],
        "recipe": first["recipe"],
        "tokenizers": first["tokenizers"],
        "step": max(steps),
        "averaged": [str(p) for p in paths],
    }


# Sections that define the model and its data: a resumed run must not change them.
_FIXED_SECTIONS = ("data", "tokenizer", "filter", "model", "seed")


def check_resumable(state: dict, recipe: config.Recipe, path: Path) -> None:
    """Raises NmtError when last.pt at `path` cannot be resumed with `recipe`: the model or its
    data changed, or the run already reached its step, patience or time limit."""
    # Through this nmt's recipe type: keys added since the checkpoint was written take their
    # defaults rather than count as changed.
    saved = config.to_dict(config.from_dict(state["recipe"]))
    current = config.to_dict(recipe)
    for section in _FIXED_SECTIONS:
        if saved.get(section) != current[section]:
            if isinstance(current[section], dict):
                keys = [
                    k
                    for k in current[section]
                    if saved.get(section, {}).get(k) != current[section][k]
                ]
                what = ", ".join(f"{section}.{k}" for k in keys) or section
            else:
                what = section
            raise NmtError(
                f"{path} was trained with a different {what}; resume with the recipe it was "
                "trained with, or use --force to train from scratch"
            )
    if "train_state" not in state:
        raise NmtError(f"{path} has no optimizer state to resume from; use --force to start again")
    progress = state["train_state"]
    if progress["step"] >= recipe.train.max_steps:
        raise NmtError(
            f"{path.parent} is already trained to step {progress['step']} (train.max_steps="
            f"{recipe.train.max_steps}); raise train.max_steps to continue, or use --force to "
            "train from scratch"
        )
    patience = recipe.train.patience
    if patience and progress["bad_validations"] >= patience:
        raise NmtError(
            f"{path.parent} stopped early: {patience} validations without a better BLEU "
            "(train.patience); raise train.patience to continue, or use --force"
        )
    budget = recipe.train.max_seconds
    spent = progress.get("budget_spent")  # absent from checkpoints of older versions
    if budget is not None and (progress["seconds"] >= budget or (spent and budget <= spent)):
        raise NmtError(
            f"{path.parent} has used its train.max_time ({recipe.train.max_time}); raise "
            "train.max_time to continue, or use --force to train from scratch"
        )


def same_tokenizers(a: dict[str, bytes], b: dict[str, bytes]) -> bool:
    """Whether two checkpoints' tokenizers ({"src": proto, "tgt": proto}) encode and decode
    alike: the same serialized models once the paths of their training are left out, so two
    runs preprocessed from the same text with the same settings (each in its own folder)
    qualify for an ensemble, and any other difference does not."""
    return a.keys() == b.keys() and all(_without_paths(a[k]) == _without_paths(b[k]) for k in a)


# Field numbers of sentencepiece_model.proto: ModelProto.trainer_spec, and within TrainerSpec
# `input` (the training files) and `model_prefix` (where the model was written). Nothing reads
# these two when encoding or decoding.
_TRAINER_SPEC, _INPUT, _MODEL_PREFIX = 2, 1, 2


def _without_paths(proto: bytes) -> bytes:
    """The serialized ModelProto without TrainerSpec's input and model_prefix, re-serialized
    field by field (protobuf's wire format; sentencepiece's own protobuf classes need the
    protobuf package, which nmt does not depend on)."""
    out = bytearray()
    try:
        for number, wire, raw, payload in _wire_fields(proto):
            if number == _TRAINER_SPEC and wire == 2:
                kept = b"".join(
                    r for n, _, r, _ in _wire_fields(payload) if n not in (_INPUT, _MODEL_PREFIX)
                )
                out += _varint(number << 3 | 2) + _varint(len(kept)) + kept
            else:
                out += raw
    except (IndexError, ValueError):
        return proto  # not a protobuf message: compared as it is
    return bytes(out)


def _wire_fields(data: bytes) -> Iterator[tuple[int, int, bytes, bytes]]:
    """(field number, wire type, the field's bytes, its payload if length-delimited)."""
    i = 0
    while i < len(data):
        start = i
        key, i = _read_varint(data, i)
        wire, payload = key & 7, b""
        if wire == 0:
            _, i = _read_varint(data, i)
        elif wire == 1:
            i += 8
        elif wire == 2:
            size, i = _read_varint(data, i)
            payload, i = data[i : i + size], i + size
            if i > len(data):
                raise ValueError("a field runs past the end")
        elif wire == 5:
            i += 4
        else:
            raise ValueError(f"protobuf wire type {wire}")
        yield key >> 3, wire, data[start:i], payload


def _read_varint(data: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[i]
        value |= (byte & 0x7F) << shift
        i, shift = i + 1, shift + 7
        if byte < 0x80:
            return value, i


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)
