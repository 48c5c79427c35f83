"""A SentencePiece model's pieces rewritten into a given id order, at the level of its protobuf
bytes (no protobuf package needed).

A Marian model's SentencePiece files segment text, but the model's ids come from vocab.json, one
vocabulary for both sides. `reorder` writes a SentencePiece model whose piece i is vocabulary
entry i, so that SentencePiece's own ids are the model's ids and nmt's Tokenizer can use it as it
is. Pieces the vocabulary has and this model lacks (the other language's) become UNUSED pieces:
SentencePiece never produces them, so the segmentation is the original one.

ModelProto, as far as this module reads it (sentencepiece_model.proto):

    1  repeated SentencePiece pieces     {1: piece (string), 2: score (float), 3: type (enum)}
    2  TrainerSpec trainer_spec          {40-43: unk/bos/eos/pad id, 45-48: their pieces}
    other fields                         kept byte for byte (normalizer spec, ...)
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from nmt.errors import NmtError

# SentencePiece.Type
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

_VARINT, _FIXED64, _LEN, _FIXED32 = 0, 1, 2, 5


@dataclass(frozen=True)
class Piece:
    text: str
    score: float = 0.0
    type: int = NORMAL


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if at >= len(data):
            raise ValueError("truncated varint")
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, at
        shift += 7


def _encode_varint(value: int) -> bytes:
    if value < 0:
        value += 1 << 64  # int32/int64 fields write negatives as 10-byte two's complement
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _fields(data: bytes) -> list[tuple[int, int, bytes, bytes]]:
    """(field number, wire type, payload, the whole field's bytes) for each field, in order."""
    fields, at = [], 0
    while at < len(data):
        start = at
        key, at = _varint(data, at)
        number, wire = key >> 3, key & 7
        if wire == _VARINT:
            value, at = _varint(data, at)
            payload = _encode_varint(value)
        elif wire == _FIXED64:
            payload, at = data[at : at + 8], at + 8
        elif wire == _FIXED32:
            payload, at = data[at : at + 4], at + 4
        elif wire == _LEN:
            size, at = _varint(data, at)
            payload, at = data[at : at + size], at + size
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if at > len(data):
            raise ValueError("truncated field")
        fields.append((number, wire, payload, data[start:at]))
    return fields


def _field(number: int, wire: int, payload: bytes) -> bytes:
    key = _encode_varint(number << 3 | wire)
    if wire == _LEN:
        return key + _encode_varint(len(payload)) + payload
    return key + payload


def read_pieces(proto: bytes) -> list[Piece]:
    """The pieces of a serialized SentencePiece model, in id order."""
    pieces = []
    try:
        for number, wire, payload, _ in _fields(proto):
            if number != 1 or wire != _LEN:
                continue
            text, score, kind = "", 0.0, NORMAL
            for n, w, value, _ in _fields(payload):
                if n == 1 and w == _LEN:
                    text = value.decode("utf-8")
                elif n == 2 and w == _FIXED32:
                    score = struct.unpack("<f", value)[0]
                elif n == 3 and w == _VARINT:
                    kind = _varint(value, 0)[0]
            pieces.append(Piece(text, score, kind))
    except (ValueError, UnicodeDecodeError) as e:
        raise NmtError(f"not a SentencePiece model ({e})") from None
    return pieces


def _piece_bytes(piece: Piece) -> bytes:
    out = _field(1, _LEN, piece.text.encode("utf-8"))
    out += _field(2, _FIXED32, struct.pack("<f", piece.score))
    if piece.type != NORMAL:
        out += _field(3, _VARINT, _encode_varint(piece.type))
    return out


def _trainer_spec(payload: bytes, specials: dict[str, tuple[int, str]]) -> bytes:
    """TrainerSpec with the special pieces' ids and names replaced."""
    ids = {40: "unk", 41: "bos", 42: "eos", 43: "pad"}
    names = {45: "unk", 46: "bos", 47: "eos", 48: "pad"}
    kept = [raw for n, _, _, raw in _fields(payload) if n not in ids and n not in names]
    for number, role in ids.items():
        kept.append(_field(number, _VARINT, _encode_varint(specials[role][0])))
    for number, role in names.items():
        kept.append(_field(number, _LEN, specials[role][1].encode("utf-8")))
    return b"".join(kept)


def reorder(proto: bytes, vocabulary: list[str], specials: dict[str, tuple[int, str]]) -> bytes:
    """`proto` with exactly the pieces of `vocabulary`, piece i at id i.

    A piece this model has keeps its score and type; any other becomes UNUSED. `specials` maps
    unk/bos/eos/pad to (id, piece): those pieces get SentencePiece's UNKNOWN or CONTROL type and
    the trainer spec names them, so that the loaded model reports these ids.
    """
    own = {piece.text: piece for piece in read_pieces(proto)}
    kinds = {specials["unk"][0]: UNKNOWN}
    for role in ("bos", "eos", "pad"):
        kinds[specials[role][0]] = CONTROL
    pieces = []
    for i, text in enumerate(vocabulary):
        piece = own.get(text, Piece(text, 0.0, UNUSED))
        if i in kinds:
            piece = Piece(text, 0.0, kinds[i])
        elif piece.type in (UNKNOWN, CONTROL):  # the original's specials, at other ids now
            piece = Piece(text, 0.0, UNUSED)
        pieces.append(_field(1, _LEN, _piece_bytes(piece)))
    rest = []
    for number, _, payload, raw in _fields(proto):
        if number == 1:
            continue
        rest.append(_field(2, _LEN, _trainer_spec(payload, specials)) if number == 2 else raw)
    return b"".join(pieces) + b"".join(rest)
