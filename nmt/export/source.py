"""What every export starts from: an output folder that may be written, and the model of a run
folder or checkpoint with the decoding settings `nmt translate` would use."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nmt import checkpoint, config
from nmt.errors import NmtError
from nmt.models.builder import load_model


def check_output(out_dir: Path, ours: bool, force: bool) -> None:
    """Refuse to write into a folder that holds something else, or (without `force`) an
    earlier export; `ours`: the folder holds an export of the same format."""
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        if not ours:
            raise NmtError(
                f"{out_dir} exists and was not written by nmt export; export into a new or "
                "empty folder"
            )
        if not force:
            raise NmtError(f"{out_dir} holds an exported model; use --force to replace it")
    if not out_dir.parent.is_dir():
        raise NmtError(f"output folder does not exist: {out_dir.parent}")


def load_source(path: str | Path) -> tuple[Path, dict, Any, Any, Any, Any, config.DecodeConfig]:
    """The checkpoint a run folder offers (or the file given), its state, recipe, model and
    tokenizers, and the decoding settings: the run's recipe.yaml, where `nmt tune` writes."""
    source = checkpoint.resolve(path)
    state = checkpoint.load(source)
    recipe, model, src_tok, tgt_tok = load_model(state, source)
    decode = recipe.decode
    if Path(path).is_dir() and (Path(path) / "recipe.yaml").is_file():
        decode = config.read_decode(Path(path) / "recipe.yaml")
    return source, state, recipe, model, src_tok, tgt_tok, decode
