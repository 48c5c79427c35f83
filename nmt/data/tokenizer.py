"""SentencePiece subword models: training, loading (from a file or from bytes), encode/decode.

Every model reserves the same special ids, so source and target ids mean the same thing
to the model: 0 padding, 1 unknown, 2 begin-of-sentence, 3 end-of-sentence.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import sentencepiece as spm

from nmt.config import TokenizerConfig
from nmt.errors import NmtError

PAD, UNK, BOS, EOS = 0, 1, 2, 3


class Tokenizer:
    """A loaded SentencePiece model; `proto` is its serialized form, stored in checkpoints."""

    def __init__(self, proto: bytes) -> None:
        self.proto = bytes(proto)
        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.LoadFromSerializedProto(self.proto)
        except Exception as e:  # sentencepiece raises bare RuntimeError/OSError here
            raise NmtError(f"not a valid SentencePiece model ({e})") from None
        if (self.sp.pad_id(), self.sp.unk_id(), self.sp.bos_id(), self.sp.eos_id()) != (
            PAD,
            UNK,
            BOS,
            EOS,
        ):
            raise NmtError(
                "SentencePiece model must use pad_id=0 unk_id=1 bos_id=2 eos_id=3 "
                "(train it with `nmt preprocess`, or with those options)"
            )

    @classmethod
    def from_file(cls, path: str | Path) -> Tokenizer:
        try:
            return cls(Path(path).read_bytes())
        except FileNotFoundError:
            raise NmtError(f"SentencePiece model not found: {path}") from None
        except NmtError as e:
            raise NmtError(f"{path}: {e}") from None

    def __len__(self) -> int:
        return self.sp.get_piece_size()

    def encode(self, lines: Sequence[str]) -> list[list[int]]:
        return self.sp.encode(list(lines), out_type=int)

    def sample(self, lines: Sequence[str], alpha: float, nbest: int, seed: int) -> list[list[int]]:
        """One sampled segmentation per line (subword regularisation), the same for the same
        seed: one thread, since each SentencePiece thread would draw from its own stream."""
        spm.set_random_generator_seed(seed)
        return self.sp.encode(
            list(lines),
            out_type=int,
            enable_sampling=True,
            alpha=alpha,
            nbest_size=nbest,
            num_threads=1,
        )

    def decode(self, ids: Sequence[Sequence[int]]) -> list[str]:
        return self.sp.decode([list(x) for x in ids])

    def unknown_characters(self, text: str) -> list[str]:
        """The characters of `text` this model has no piece for (each would decode as ⁇), in
        order of first appearance."""
        if UNK not in self.sp.encode(text, out_type=int):
            return []
        chars = dict.fromkeys(c for c in text if not c.isspace())
        return [c for c in chars if UNK in self.sp.encode(c, out_type=int)]

    def pieces(self, line: str) -> list[str]:
        return self.sp.encode(line, out_type=str)

    def id_pieces(self, ids: Sequence[int]) -> list[str]:
        return [self.sp.id_to_piece(int(i)) for i in ids]


def train_sentencepiece(
    inputs: Sequence[Path], model_prefix: Path, cfg: TokenizerConfig, seed: int = 1
) -> Tokenizer:
    """Train one SentencePiece model on the given text files; writes `<prefix>.model/.vocab`."""
    model_prefix.parent.mkdir(parents=True, exist_ok=True)
    spm.set_random_generator_seed(seed)
    # SentencePiece logs to file descriptor 2; keep its chatter off the user's terminal.
    with _fd2_to_temporary_file():
        try:
            spm.SentencePieceTrainer.train(
                input=[str(p) for p in inputs],
                model_prefix=str(model_prefix),
                model_type=cfg.type,
                vocab_size=cfg.vocab_size,
                character_coverage=cfg.character_coverage,
                input_sentence_size=cfg.input_sentence_size,
                shuffle_input_sentence=True,
                pad_id=PAD,
                unk_id=UNK,
                bos_id=BOS,
                eos_id=EOS,
                num_threads=2,
            )
        except RuntimeError as e:
            message = str(e).strip().splitlines()[-1] if str(e).strip() else "training failed"
            message = re.sub(r"^.*\] ", "", message)  # drop the C++ source location
            if "required_chars" in message:
                raise NmtError(
                    f"tokenizer.vocab_size={cfg.vocab_size} is too small for the characters of "
                    "this corpus; raise tokenizer.vocab_size or lower "
                    "tokenizer.character_coverage"
                ) from None
            if "Vocabulary size" in message:
                most = re.search(r"<= (\d+)", message)
                limit = f"at most {most.group(1)} fit" if most else message
                raise NmtError(
                    f"tokenizer.vocab_size={cfg.vocab_size} is too large for this corpus "
                    f"({limit}); lower tokenizer.vocab_size"
                ) from None
            raise NmtError(f"SentencePiece training failed: {message}") from None
    return Tokenizer.from_file(Path(f"{model_prefix}.model"))


@contextlib.contextmanager
def _fd2_to_temporary_file() -> Iterator[None]:
    """Point file descriptor 2 at a temporary file for the duration (SentencePiece's own
    `logstream` needs `sys.stderr.fileno()`, which test runners and notebooks lack)."""
    saved = os.dup(2)
    try:
        with tempfile.TemporaryFile() as log:
            os.dup2(log.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)
