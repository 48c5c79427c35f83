"""The run's log: log.jsonl, one JSON object per event (start, train, valid, averaged, end...),
and optionally the same numbers in TensorBoard."""

from __future__ import annotations

import json
from pathlib import Path

from nmt.errors import NmtError

LOG = "log.jsonl"  # in the run folder

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


def read(run_or_log: str | Path, kind: str | None = None) -> list[dict]:
    """The records of a run folder's log (or of a log file given itself), of one kind or all;
    none where there is no log yet."""
    run_or_log = Path(run_or_log)
    path = run_or_log if run_or_log.is_file() else run_or_log / LOG
    if not path.is_file():
        return []
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return [r for r in records if kind is None or r["kind"] == kind]
