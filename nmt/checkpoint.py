"""Checkpoints: one file holds the weights, the resolved recipe and the tokenizer models.

Saving is atomic (temporary file, fsync, rename), so a crash or a full disk during a save leaves
the previous checkpoint intact. Loading uses `torch.load(weights_only=True)`, which refuses
pickled code: a checkpoint can carry tensors, numbers, strings and bytes, nothing executable.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

from nmt.errors import NmtError

FORMAT = 1
REQUIRED = ("format", "model", "recipe", "tokenizers")


def save(state: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": FORMAT, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise NmtError(f"cannot write checkpoint {path}: {e.strerror or e}") from None
    except RuntimeError as e:
        tmp.unlink(missing_ok=True)
        if "write" not in str(e):
            raise
        # torch.save's zip writer reports a full disk as a RuntimeError.
        raise NmtError(
            f"cannot write checkpoint {path}: write failed (is the disk full?)"
        ) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        for name in ("best.pt", "last.pt"):
            if (path / name).is_file():
                path = path / name
                break
        else:
            raise NmtError(f"no checkpoint (best.pt or last.pt) in the folder {path}")
    if path.is_file() and not zipfile.is_zipfile(path):
        # torch.save has written zip archives since PyTorch 1.6; anything else is not ours.
        raise NmtError(f"{path} is not a readable checkpoint (not a PyTorch zip archive)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise NmtError(f"checkpoint not found: {path}") from None
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
    if state["format"] != FORMAT:
        raise NmtError(f"{path} has checkpoint format {state['format']}; this nmt reads {FORMAT}")
    return state


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
    first checkpoint's recipe and tokenizers. All must share the model and the tokenizers."""
    if not paths:
        raise NmtError("no checkpoints to average")
    first = load(paths[0])
    sums = {k: v.double() for k, v in first["model"].items()}
    for path in paths[1:]:
        state = load(path)
        if state["recipe"]["model"] != first["recipe"]["model"]:
            raise NmtError(f"{path} has another model than {paths[0]}; only average one model")
        if state["tokenizers"] != first["tokenizers"]:
            raise NmtError(f"{path} has other tokenizers than {paths[0]}; only average one model")
        if state["model"].keys() != sums.keys():
            raise NmtError(f"{path} has other weights than {paths[0]}")
        for k, v in state["model"].items():
            sums[k] += v.double()
    model = {k: (v / len(paths)).to(first["model"][k].dtype) for k, v in sums.items()}
    return {
        "model": model,
        "recipe": first["recipe"],
        "tokenizers": first["tokenizers"],
        "averaged": [str(p) for p in paths],
    }
