"""Part 1: reading a SentencePiece `tokenizer.model` without the protobuf package: the wire format, then the schema."""

from __future__ import annotations

import struct

from minimoe.tokenizer.base import DEFAULT_UNK_SURFACE, MODEL_TYPES, NORMAL, TYPE_NAMES, TokenizerError  # noqa: F401

# ===========================================================================================================
# 1. The protobuf wire format
# ===========================================================================================================
# A .model file is one serialized `ModelProto` message. Protobuf's wire format is a flat list of fields, each
# a key followed by a value; the key is a varint `(field_number << 3) | wire_type`:
#
#   wire type 0  VARINT   an integer in 7-bit groups, least significant first, high bit = "more bytes follow"
#                         (int32 -1 is sign-extended to 64 bits: ten bytes ending in 0x01)
#   wire type 1  I64      8 raw little-endian bytes (double, fixed64)
#   wire type 2  LEN      a varint length, then that many bytes: a string, bytes, or a nested message
#   wire type 5  I32      4 raw little-endian bytes (float, fixed32)
#   wire types 3, 4       "groups", deprecated since proto2; never in a .model file, so an error here
#
# Example: a piece { piece: "▁t", score: -2.0 } inside ModelProto.pieces (field 1) is, in hex,
#   0a 0b                 field 1 (pieces), LEN, 11 bytes follow
#      0a 04 e2 96 81 74  field 1 (piece), LEN 4: "▁t" in UTF-8
#      15 00 00 00 c0     field 2 (score), I32: float32 -2.0
# The message never says which fields exist: a reader knows the schema (below) and skips unknown numbers, and
# a field that is absent takes the schema's default. That is why a missing `add_dummy_prefix` means true.

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    """Decode the varint at buf[pos]; return (value, position after it)."""
    value = shift = 0
    while True:
        if pos >= len(buf):
            raise TokenizerError("truncated varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift >= 70:  # a varint is at most 10 bytes
            raise TokenizerError("varint longer than 10 bytes")


def _fields(buf: bytes) -> list[tuple[int, int, int | bytes]]:
    """Split one message into (field_number, wire_type, value): an int for VARINT, bytes otherwise."""
    out = []
    pos = 0
    while pos < len(buf):
        key, pos = _read_varint(buf, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise TokenizerError("field number 0 is not valid protobuf")
        if wire == _VARINT:
            value, pos = _read_varint(buf, pos)
        elif wire == _LEN:
            size, pos = _read_varint(buf, pos)
            if pos + size > len(buf):
                raise TokenizerError(f"field {number} says {size} bytes but only {len(buf) - pos} remain")
            value, pos = buf[pos : pos + size], pos + size
        elif wire in (_I64, _I32):
            size = 8 if wire == _I64 else 4
            if pos + size > len(buf):
                raise TokenizerError(f"field {number} is cut short")
            value, pos = buf[pos : pos + size], pos + size
        else:
            raise TokenizerError(f"wire type {wire} (field {number}) is not used by SentencePiece models")
        out.append((number, wire, value))
    return out


def _as_float32(raw: bytes) -> float:
    return struct.unpack("<f", raw)[0]


# The part of sentencepiece_model.proto that encoding and decoding need (field numbers, proto2 defaults).
#   ModelProto      1 pieces (repeated SentencePiece)  2 trainer_spec  3 normalizer_spec  5 denormalizer_spec
#   SentencePiece   1 piece (string)  2 score (float)  3 type (enum, default NORMAL)
#   TrainerSpec     3 model_type (UNIGRAM=1 default, BPE=2, WORD=3, CHAR=4)  24 treat_whitespace_as_suffix
#                   35 byte_fallback  44 unk_surface  45 unk_piece  46 bos_piece  47 eos_piece  48 pad_piece
#   NormalizerSpec  1 name  2 precompiled_charsmap  3 add_dummy_prefix (default true)
#                   4 remove_extra_whitespaces (default true)  5 escape_whitespaces (default true)
# TrainerSpec also holds unk_id/bos_id/eos_id (40-42), but those only steer training: the library looks the
# special ids up by piece text (`bos_piece`, default "<s>"), and so do we.


def _parse_model_proto(buf: bytes, source: str) -> dict:
    """Read a serialized ModelProto into a plain dict of what the tokenizer needs."""
    spec = {
        "pieces": [],  # list of (piece, score, type)
        "model_type": 1,
        "treat_whitespace_as_suffix": False,
        "byte_fallback": False,
        "unk_surface": DEFAULT_UNK_SURFACE,
        "unk_piece": "<unk>",
        "bos_piece": "<s>",
        "eos_piece": "</s>",
        "pad_piece": "<pad>",
        "normalizer_name": "",
        "precompiled_charsmap": b"",
        "add_dummy_prefix": True,
        "remove_extra_whitespaces": True,
        "escape_whitespaces": True,
        "denormalizer_charsmap": b"",
    }

    def text(value, what):
        if not isinstance(value, bytes):
            raise TokenizerError(f"{source}: {what} should be a string, found a number")
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise TokenizerError(f"{source}: {what} is not valid UTF-8") from None

    def number(value, what):
        if not isinstance(value, int):
            raise TokenizerError(f"{source}: {what} should be a varint, found {len(value)} raw bytes")
        return value

    for field, wire, value in _fields(buf):
        if field == 1 and wire == _LEN:  # one SentencePiece
            piece, score, kind = None, 0.0, NORMAL
            for f, w, v in _fields(value):
                if f == 1:
                    piece = text(v, f"piece {len(spec['pieces'])}")
                elif f == 2 and w == _I32:
                    score = _as_float32(v)
                elif f == 3:
                    kind = number(v, "piece type")
            spec["pieces"].append((piece, score, kind))
        elif field == 2 and wire == _LEN:  # TrainerSpec
            for f, w, v in _fields(value):
                if f == 3:
                    spec["model_type"] = number(v, "trainer_spec.model_type")
                elif f == 24:
                    spec["treat_whitespace_as_suffix"] = bool(number(v, "treat_whitespace_as_suffix"))
                elif f == 35:
                    spec["byte_fallback"] = bool(number(v, "trainer_spec.byte_fallback"))
                elif f in (44, 45, 46, 47, 48):
                    name = {44: "unk_surface", 45: "unk_piece", 46: "bos_piece", 47: "eos_piece", 48: "pad_piece"}[f]
                    spec[name] = text(v, f"trainer_spec.{name}")
        elif field == 3 and wire == _LEN:  # NormalizerSpec
            for f, w, v in _fields(value):
                if f == 1:
                    spec["normalizer_name"] = text(v, "normalizer_spec.name")
                elif f == 2:
                    spec["precompiled_charsmap"] = v if isinstance(v, bytes) else b""
                elif f in (3, 4, 5):
                    name = {3: "add_dummy_prefix", 4: "remove_extra_whitespaces", 5: "escape_whitespaces"}[f]
                    spec[name] = bool(number(v, f"normalizer_spec.{name}"))
        elif field == 5 and wire == _LEN:  # denormalizer_spec: a NormalizerSpec applied after decoding
            for f, w, v in _fields(value):
                if f == 2 and isinstance(v, bytes):
                    spec["denormalizer_charsmap"] = v
    return spec
