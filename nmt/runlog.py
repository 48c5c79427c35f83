"""The run's log: log.jsonl, one JSON object per event (start, train, valid, averaged, end...),
and optionally the same numbers in TensorBoard."""

from __future__ import annotations

import json
from pathlib import Path

from nmt.errors import NmtError

# The numbers of log.jsonl that TensorBoard shows, by record kind.
_SCALARS = {
    "train": ("loss", "lr", "tgt_tokens_per_s"),
    "valid": ("valid_loss", "valid_ppl", "valid_bleu"),
    "averaged": ("valid_loss", "valid_ppl", "valid_bleu"),
}


class JsonlLog:
    """Appends one JSON object per line; flushed so a crash loses nothing already logged.
    With a TensorBoard folder, the same numbers also go there (tag `kind/name`, at `step`)."""

    def __init__(self, path: Path | None, tensorboard: Path | None = None) -> None:
        # No path (ranks other than 0): records are dropped.
        self.file = open(path, "a", encoding="utf-8") if path else None  # noqa: SIM115
        self.board = None
        if tensorboard is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise NmtError(
                    "train.tensorboard needs TensorBoard; install it with: "
                    "pip install 'nmt[tensorboard]'"
                ) from None
            self.board = SummaryWriter(str(tensorboard))

    def write(self, **record: object) -> None:
        if self.file:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()
        if self.board is not None and record.get("kind") in _SCALARS:
            for name in _SCALARS[record["kind"]]:
                self.board.add_scalar(f"{record['kind']}/{name}", record[name], record["step"])

    def close(self) -> None:
        if self.file:
            self.file.close()
        if self.board is not None:
            self.board.close()
