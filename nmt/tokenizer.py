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

    def pieces(self, line: str) -> list[str]:
        return self.sp.encode(line, out_type=str)

    def id_pieces(self, ids: Sequence[int]) -> list[str]:
        return [self.sp.id_to_piece(int(i)) for i in ids]


def same_models(a: dict[str, bytes], b: dict[str, bytes]) -> bool:
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
