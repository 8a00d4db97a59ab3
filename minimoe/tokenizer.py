"""A from-scratch SentencePiece BPE tokenizer that gives the same ids and text as `sentencepiece` itself.

Mistral-7B (and so Confinus-2x7B) ships its tokenizer as `tokenizer.model`: a SentencePiece BPE model with
32000 pieces, byte fallback and a dummy prefix space. This module reads that file and runs the same algorithm
as the reference C++ library, in six parts that read top to bottom:

    1. the protobuf wire format      a 40-line reader for the file (no protobuf package needed)
    2. the model                     pieces, scores, types and the normaliser's three switches
    3. encode                        normalise -> split into chunks -> BPE-merge each chunk -> ids, byte fallback
    4. decode                        ids -> text, the sentencepiece way (control ids vanish, bad bytes -> U+FFFD)
    5. streaming decode              one id at a time, never half a character, same text as decode()
    6. tokenizer.json                the same engine with Hugging Face `tokenizers` rules (merge ranks, not
                                     scores), for a directory that has no tokenizer.model

docs/tokenizer.md walks through each part with worked examples and the measured speed.

Pure Python standard library: no torch, nothing else from minimoe, so `import minimoe.tokenizer` is instant.
"""

from __future__ import annotations

import heapq
import json
import os
import re
import struct

__all__ = ["Tokenizer", "StreamDecoder", "HFTokenizer", "HFStreamDecoder", "TokenizerError", "load_tokenizer"]


class TokenizerError(ValueError):
    """A tokenizer file or an input that minimoe cannot use; the message names the file or id, expected and found."""


# The meta symbol SentencePiece writes for a space: U+2581 LOWER ONE EIGHTH BLOCK, three bytes in UTF-8.
SPACE = "\u2581"  # "▁"
# What `decode` prints for the <unk> id unless the model says otherwise: U+2047 DOUBLE QUESTION MARK in spaces.
DEFAULT_UNK_SURFACE = " \u2047 "
REPLACEMENT_CHAR = "\ufffd"

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
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
TYPE_NAMES = {1: "NORMAL", 2: "UNKNOWN", 3: "CONTROL", 4: "USER_DEFINED", 5: "UNUSED", 6: "BYTE"}
MODEL_TYPES = {1: "UNIGRAM", 2: "BPE", 3: "WORD", 4: "CHAR"}


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


# ===========================================================================================================
# 2-5. The tokenizer
# ===========================================================================================================


def _byte_piece_value(piece: str) -> int | None:
    """"<0x41>" -> 0x41, the exact spelling (two upper-case hex digits) of SentencePiece's byte pieces."""
    if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
        try:
            value = int(piece[3:5], 16)
        except ValueError:
            return None
        return value if piece == f"<0x{value:02X}>" else None
    return None


def _utf8_length(lead: int) -> int:
    """How many bytes a UTF-8 sequence starting with `lead` claims to have; 0 for a byte that cannot lead."""
    if lead < 0x80:
        return 1
    if lead & 0xE0 == 0xC0:
        return 2
    if lead & 0xF0 == 0xE0:
        return 3
    if lead & 0xF8 == 0xF0:
        return 4
    return 0  # a continuation byte 0x80..0xBF or 0xF8..0xFF


def _decode_byte_run(run: bytes, final: bool) -> tuple[str, int]:
    """Turn a run of byte-piece values into text the way sentencepiece does; return (text, bytes used).

    sentencepiece walks the run one character at a time: if the bytes at the cursor form one valid UTF-8
    character it emits it, otherwise it emits U+FFFD for *one* byte and moves on by one. So b"\\xe2\\x96" (a
    three-byte character cut short) gives two U+FFFD, where Python's errors="replace" would give one.
    With final=False the run may still grow (streaming), so a character that is merely incomplete is held back.
    """
    out = []
    pos = 0
    while pos < len(run):
        need = _utf8_length(run[pos])
        if need == 0:
            out.append(REPLACEMENT_CHAR)
            pos += 1
            continue
        if pos + need > len(run):
            if not final:
                break  # wait for more bytes
            out.append(REPLACEMENT_CHAR)
            pos += 1
            continue
        try:
            # Python's strict decoder rejects exactly what sentencepiece rejects: bad continuation bytes,
            # overlong forms, surrogates (U+D800..U+DFFF) and code points above U+10FFFF.
            out.append(run[pos : pos + need].decode("utf-8"))
            pos += need
        except UnicodeDecodeError:
            out.append(REPLACEMENT_CHAR)
            pos += 1
    return "".join(out), pos


class Tokenizer:
    """A SentencePiece BPE tokenizer: `encode(text) -> ids` and `decode(ids) -> text`, as sentencepiece does.

    Build one with `load_tokenizer(path)`. Piece types (sentencepiece's own categories):
      NORMAL        learned pieces; they merge with each other by score
      USER_DEFINED  always one token wherever their text appears, never merged further
      UNUSED        may take part in merges but are split back into the pieces that formed them
      CONTROL       <s>, </s>, [INST]...: never produced from text, invisible when decoded
      UNKNOWN       <unk>: a character outside the vocabulary when there is no byte fallback
      BYTE          <0x00>..<0xFF>: with byte fallback, an unknown character becomes its UTF-8 bytes
    """

    def __init__(
        self,
        pieces: list[tuple[str, float, int]],
        *,
        add_dummy_prefix: bool = True,
        remove_extra_whitespaces: bool = False,
        escape_whitespaces: bool = True,
        byte_fallback: bool = True,
        unk_surface: str = DEFAULT_UNK_SURFACE,
        unk_piece: str = "<unk>",
        bos_piece: str = "<s>",
        eos_piece: str = "</s>",
        pad_piece: str = "<pad>",
        source: str = "<memory>",
    ):
        self.source = source
        if not pieces:
            raise TokenizerError(f"{source}: the model has no pieces; expected a vocabulary (32000 for Mistral)")
        self.add_dummy_prefix = add_dummy_prefix
        self.remove_extra_whitespaces = remove_extra_whitespaces
        self.escape_whitespaces = escape_whitespaces
        self.byte_fallback = byte_fallback
        self.unk_surface = unk_surface

        self._pieces = [p for p, _, _ in pieces]
        self._scores = [s for _, s, _ in pieces]
        self._types = [t for _, _, t in pieces]
        # Two lookups, as in the library: "mergeable" pieces (NORMAL, USER_DEFINED, UNUSED) that BPE may form,
        # and reserved ones (CONTROL, UNKNOWN, BYTE) that text never turns into. piece -> id looks at the
        # reserved table first.
        self._merge_score: dict[str, float] = {}  # mergeable piece -> score (the BPE priority)
        reserved: dict[str, int] = {}
        mergeable: dict[str, int] = {}
        self._byte_value: dict[int, int] = {}  # id -> byte, for BYTE pieces
        user_defined = []
        unk_ids = []
        for i, (piece, score, kind) in enumerate(pieces):
            if kind not in TYPE_NAMES:
                raise TokenizerError(f"{source}: piece {i} has type {kind}; expected one of {sorted(TYPE_NAMES)}")
            if not piece:
                raise TokenizerError(f"{source}: piece {i} is empty; sentencepiece requires non-empty pieces")
            table = mergeable if kind in (NORMAL, USER_DEFINED, UNUSED) else reserved
            if piece in table:
                raise TokenizerError(f"{source}: piece {piece!r} appears twice (ids {table[piece]} and {i})")
            table[piece] = i
            if kind in (NORMAL, USER_DEFINED, UNUSED):
                self._merge_score[piece] = score
            if kind == USER_DEFINED:
                user_defined.append(piece)
            elif kind == UNKNOWN:
                unk_ids.append(i)
            elif kind == BYTE:
                value = _byte_piece_value(piece)
                if value is None:
                    raise TokenizerError(f"{source}: byte piece {i} is {piece!r}; expected the form <0xNN>")
                if not byte_fallback:
                    raise TokenizerError(f"{source}: byte piece {piece!r} found but byte_fallback is off")
                self._byte_value[i] = value
        if len(unk_ids) != 1:
            raise TokenizerError(f"{source}: expected exactly one UNKNOWN piece (<unk>), found {len(unk_ids)}")
        self._piece_to_id = {**mergeable, **reserved}  # reserved wins on a clash, as in the library
        self.vocab_size = len(pieces)
        self.unk_id = unk_ids[0]
        # Like the library, the special ids are found by piece text and count only if the piece is CONTROL.
        self.bos_id = self._control_id(bos_piece)
        self.eos_id = self._control_id(eos_piece)
        self.pad_id = self._control_id(pad_piece)
        # byte -> id of its <0xNN> piece (the unknown id if a model lacks one, as the library does)
        by_value = {v: i for i, v in self._byte_value.items()}
        self._byte_ids = [by_value.get(b, self.unk_id) for b in range(256)]
        self._unused = {p for p, i in mergeable.items() if self._types[i] == UNUSED}
        self._has_unused = bool(self._unused)

        # User-defined pieces are cut out first, longest match wins (the regex tries longer ones first); any
        # other character is a symbol of its own.
        self._user_defined = None
        if user_defined:
            alternatives = "|".join(re.escape(p) for p in sorted(user_defined, key=len, reverse=True))
            self._user_defined = re.compile(f"(?P<user>{alternatives})|.", re.DOTALL)

        # Chunking (see _encode_normalized): legal when no mergeable piece holds a space symbol right after
        # another character, because then no merge can ever cross the boundary before a run of "▁".
        ws = SPACE if escape_whitespaces else " "
        self._ws = ws
        crossing = [p for p in mergeable if any(a != ws and b == ws for a, b in zip(p, p[1:]))]
        self.chunked = not crossing and not self._has_unused
        self._chunk_re = re.compile(f"{ws}*[^{ws}]+|{ws}+")
        self._cache: dict[str, list[int]] = {}

    def _control_id(self, piece: str) -> int | None:
        i = self._piece_to_id.get(piece)
        return i if i is not None and self._types[i] == CONTROL else None

    # -------------------------------------------------------------------------------------------------------
    # Vocabulary lookups
    # -------------------------------------------------------------------------------------------------------
    def _check_id(self, i) -> int:
        if isinstance(i, bool) or not hasattr(i, "__index__"):
            raise TypeError(f"token ids must be integers, found {type(i).__name__} {i!r}")
        i = i.__index__()
        if not 0 <= i < self.vocab_size:
            raise TokenizerError(
                f"token id {i} is outside the vocabulary of {self.source}: expected 0..{self.vocab_size - 1}"
            )
        return i

    def id_to_piece(self, i: int) -> str:
        return self._pieces[self._check_id(i)]

    def piece_to_id(self, piece: str) -> int:
        """The id of a piece; the unknown id for a string that is not a piece (as sentencepiece answers)."""
        return self._piece_to_id.get(piece, self.unk_id)

    def piece_type(self, i: int) -> str:
        return TYPE_NAMES[self._types[self._check_id(i)]]

    def score(self, i: int) -> float:
        return self._scores[self._check_id(i)]

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return f"Tokenizer({self.source!r}, vocab_size={self.vocab_size}, bos={self.bos_id}, eos={self.eos_id})"

    # -------------------------------------------------------------------------------------------------------
    # 3. Encode
    # -------------------------------------------------------------------------------------------------------
    def normalize(self, text: str) -> str:
        """The string BPE sees: spaces as "▁", a dummy "▁" in front (sentencepiece's identity normaliser).

        "Hello  world" -> "▁Hello▁▁world". The dummy prefix makes a word look the same at the start of a text
        as after a space, so "world" and " world" both start with the piece "▁world".
        With remove_extra_whitespaces (off in Mistral) runs of spaces collapse to one and the ends are trimmed.
        Only U+0020 counts as a space: tabs, newlines and NBSP stay as they are.
        """
        if self.remove_extra_whitespaces:
            text = text.lstrip(" ")
            if not text:
                return ""
            text = re.sub(" {2,}", " ", text)
        elif not text:
            return ""  # the library returns no pieces (and no dummy prefix) for an empty input
        ws = self._ws
        if self.escape_whitespaces:
            text = text.replace(" ", SPACE)
        if self.add_dummy_prefix:
            text = ws + text
        if self.remove_extra_whitespaces:
            # the library trims trailing space symbols *after* escaping, so a typed "▁" at the end goes too
            text = text.rstrip(ws)
        return text

    def encode(self, text: str, bos: bool = True, eos: bool = False) -> list[int]:
        """Token ids of `text`, with <s> in front when bos=True and </s> at the end when eos=True."""
        if not isinstance(text, str):
            raise TypeError(f"encode() takes a str, found {type(text).__name__}")
        ids = []
        if bos:
            if self.bos_id is None:
                raise TokenizerError(f"{self.source} has no CONTROL piece for <s>, so bos=True is impossible")
            ids.append(self.bos_id)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise TokenizerError(
                f"text has a lone surrogate {text[e.start]!r} at index {e.start}: expected text that can be"
                " written as UTF-8 (sentencepiece refuses it too)"
            ) from None
        ids.extend(self._encode_normalized(self.normalize(text)))
        if eos:
            if self.eos_id is None:
                raise TokenizerError(f"{self.source} has no CONTROL piece for </s>, so eos=True is impossible")
            ids.append(self.eos_id)
        return ids

    def _encode_normalized(self, normalized: str) -> list[int]:
        """BPE over the normalised string, chunk by chunk when that is provably the same as all at once.

        Why chunks are safe: BPE only ever merges two *neighbouring* symbols into a piece of the vocabulary.
        If no piece contains "x▁" (x any character other than ▁), no merge can join the symbol ending just
        before a "▁"-run to the one starting it, so the text splits there into independent chunks:
            "▁Hello▁▁world!" -> "▁Hello" | "▁▁world!"
        and each chunk merges exactly as it would inside the whole string (merge order within a chunk is
        decided by score, then position, both unchanged). Mistral's vocabulary passes this check (the
        constructor runs it); whitespace-only pieces like "▁▁▁▁" are fine, they sit at a chunk's start.
        Chunks repeat (words!), so a cache from chunk to ids skips most of the work on real text.
        """
        if not normalized:
            return []
        if not self.chunked:
            ids = self._bpe_ids(normalized)
        else:
            cache = self._cache
            if len(cache) > 200_000:  # bound the memory on endless streams of new words
                cache.clear()
            ids = []
            for chunk in self._chunk_re.findall(normalized):
                cached = cache.get(chunk)
                if cached is None:
                    cached = cache[chunk] = self._bpe_ids(chunk)
                ids.extend(cached)
        if not self.byte_fallback:
            # The library merges each run of consecutive unknown pieces into one <unk> (the merged piece is
            # still unknown: a known piece never contains an unknown character).
            ids = [i for k, i in enumerate(ids) if not (i == self.unk_id and k > 0 and ids[k - 1] == self.unk_id)]
        return ids

    def _bpe_ids(self, text: str) -> list[int]:
        """Merge one chunk and map its final symbols to ids (byte fallback for unknown characters)."""
        ids = []
        piece_to_id, types = self._piece_to_id, self._types
        symbols, rev_merge = self._bpe(text)
        for symbol in symbols:
            i = piece_to_id.get(symbol)
            if i is None:  # a character outside the vocabulary
                if self.byte_fallback:
                    ids.extend(self._byte_ids[b] for b in symbol.encode("utf-8"))
                else:
                    ids.append(self.unk_id)
            elif types[i] == UNUSED:
                ids.extend(self._resegment(symbol, rev_merge))
            else:
                ids.append(i)
        return ids

    def _resegment(self, symbol: str, rev_merge: dict) -> list[int]:
        """An UNUSED piece that BPE formed is split back into the two symbols it was last formed from."""
        i = self._piece_to_id[symbol]
        if self._types[i] != UNUSED or symbol not in rev_merge:
            return [i]
        left, right = rev_merge[symbol]
        return self._resegment(left, rev_merge) + self._resegment(right, rev_merge)

    def _bpe(self, text: str) -> tuple[list[str], dict]:
        """SentencePiece's BPE: repeatedly merge the best-scoring neighbouring pair; return the final symbols.

        Start from single characters (a user-defined piece is one frozen symbol). Every neighbouring pair whose
        concatenation is a mergeable piece goes into a max-heap keyed by (piece score, then leftmost first).
        Pop the best; skip it if either side has changed since it was pushed (a stale entry); otherwise merge
        right into left in a doubly linked list and push the two new pairs the merged symbol forms with its
        neighbours. n characters -> at most n-1 merges, each O(log n): O(n log n) for the chunk.

            ▁ h e l l o      pairs that are pieces: ▁h -36, he -6, el -42, ll -325, lo -472 (Mistral's scores)
            ▁ he l l o  ->  ▁he l l o  ->  ▁he ll o  ->  ▁hell o      then stop: "▁hello" is not a piece
        """
        if self._user_defined is None:
            return self._merge(list(text), None)
        matches = list(self._user_defined.finditer(text))
        frozen = [m.lastgroup == "user" for m in matches]  # a user-defined piece never merges further
        return self._merge([m.group() for m in matches], frozen)

    # The merge priority: the one thing the two BPE modes disagree on.
    _merge_ranks: dict | None = None  # None: by piece score (sentencepiece); a dict: by merge rank (tokenizers)

    def _merge(self, symbols: list[str], frozen: list[bool] | None) -> tuple[list[str], dict]:
        """The BPE engine shared by both formats: merge neighbouring symbols, best pair first, until none can.

        The heap, the linked list and the stale-entry check are the same in both modes; only the priority of a
        pair of neighbours (a, b) differs:
          by score (tokenizer.model, sentencepiece)   the score of the piece a+b, whichever two symbols form it;
                                                      higher first. Any split of a piece can form it.
          by rank (tokenizer.json, HF tokenizers)     the position of the pair (a, b) in the file's merge list;
                                                      lower first. Only listed pairs merge, and "▁▁▁" from
                                                      (▁, ▁▁) and from (▁▁, ▁) may have different ranks.
        Ties go to the leftmost pair in both. Symbols only ever grow, so an entry is stale exactly when the
        two symbols it was pushed for no longer have the lengths it recorded (or one has been merged away).
        """
        n = len(symbols)
        rev_merge: dict[str, tuple[str, str]] = {}
        if n < 2:
            return symbols, rev_merge
        nxt = list(range(1, n + 1))
        nxt[-1] = -1
        prv = list(range(-1, n - 1))
        heap = []
        ranks = self._merge_ranks
        if ranks is None:
            scores = self._merge_score
            track_unused = self._has_unused

            def push(left: int, right: int) -> None:
                if frozen is not None and (frozen[left] or frozen[right]):
                    return
                piece = symbols[left] + symbols[right]
                score = scores.get(piece)
                if score is not None:
                    # heapq is a min-heap: negate the score; ties go to the smaller left index, as in the library
                    heapq.heappush(heap, (-score, left, right, len(piece)))
                    if track_unused and piece in self._unused:
                        rev_merge[piece] = (symbols[left], symbols[right])  # the *last* pair pushed wins
        else:

            def push(left: int, right: int) -> None:
                a, b = symbols[left], symbols[right]
                rank = ranks.get((a, b))
                if rank is not None:
                    heapq.heappush(heap, (rank, left, right, len(a) + len(b)))

        for i in range(n - 1):
            push(i, i + 1)
        while heap:
            _, left, right, size = heapq.heappop(heap)
            a, b = symbols[left], symbols[right]
            if not a or not b or len(a) + len(b) != size:
                continue  # stale: one side was merged into something else after this entry was pushed
            symbols[left] = a + b
            symbols[right] = ""
            after = nxt[right]
            nxt[left] = after
            if after >= 0:
                prv[after] = left
            if prv[left] >= 0:
                push(prv[left], left)
            if after >= 0:
                push(left, after)
        out = []
        i = 0
        while i != -1:
            out.append(symbols[i])
            i = nxt[i]
        return out, rev_merge

    # -------------------------------------------------------------------------------------------------------
    # 4. Decode
    # -------------------------------------------------------------------------------------------------------
    def decode(self, ids) -> str:
        """Text of a list of ids, exactly as sentencepiece's DecodeIds gives it.

        - control ids (<s>, </s>, [INST]...) print nothing; <unk> prints " ⁇ ";
        - "▁" becomes a space, except that the first "▁" of the text is the dummy prefix and is dropped;
        - each run of byte pieces is read as UTF-8, and a byte that does not start a valid character becomes
          U+FFFD on its own.
        """
        stream = StreamDecoder(self)
        return "".join([stream.push(i) for i in ids]) + stream.flush()

    def stream_decoder(self) -> "StreamDecoder":
        """An incremental decoder: feed ids one by one with push(id), finish with flush()."""
        return StreamDecoder(self)

    # -------------------------------------------------------------------------------------------------------
    # Loading
    # -------------------------------------------------------------------------------------------------------
    @classmethod
    def from_model_bytes(cls, buf: bytes, source: str = "<bytes>") -> "Tokenizer":
        """Build a tokenizer from the bytes of a SentencePiece `.model` file."""
        try:
            spec = _parse_model_proto(buf, source)
        except TokenizerError as e:
            msg = str(e)
            if not msg.startswith(source):
                msg = f"{source}: {msg}"
            raise TokenizerError(
                f"{msg}; expected a SentencePiece model (a serialized ModelProto such as Mistral's tokenizer.model)"
            ) from None
        if not spec["pieces"]:
            raise TokenizerError(f"{source} holds no SentencePiece pieces: expected a SentencePiece .model file")
        if any(p is None for p, _, _ in spec["pieces"]):
            raise TokenizerError(f"{source}: a piece has no text; expected a SentencePiece .model file")
        if spec["model_type"] != 2:
            found = MODEL_TYPES.get(spec["model_type"], str(spec["model_type"]))
            raise TokenizerError(f"{source} is a SentencePiece {found} model; minimoe implements BPE models only")
        if spec["treat_whitespace_as_suffix"]:
            raise TokenizerError(f"{source} sets treat_whitespace_as_suffix; minimoe supports prefix spaces only")
        if spec["precompiled_charsmap"]:
            raise TokenizerError(
                f"{source} uses the {spec['normalizer_name']!r} normaliser (a precompiled character map);"
                " minimoe implements the 'identity' normaliser only (Llama and Mistral use it)"
            )
        if spec["denormalizer_charsmap"]:
            raise TokenizerError(f"{source} has a denormalizer character map; minimoe does not implement it")
        return cls(
            spec["pieces"],
            add_dummy_prefix=spec["add_dummy_prefix"],
            remove_extra_whitespaces=spec["remove_extra_whitespaces"],
            escape_whitespaces=spec["escape_whitespaces"],
            byte_fallback=spec["byte_fallback"],
            unk_surface=spec["unk_surface"],
            unk_piece=spec["unk_piece"],
            bos_piece=spec["bos_piece"],
            eos_piece=spec["eos_piece"],
            pad_piece=spec["pad_piece"],
            source=source,
        )


# ===========================================================================================================
# 5. Streaming decode
# ===========================================================================================================


class StreamDecoder:
    """Decode ids one at a time; the concatenation of every push() and the final flush() equals decode(ids).

    Two things make this more than "decode each id alone":
      - a character outside the vocabulary arrives as 2-4 byte pieces; emitting after the first would print
        half a character, so bytes wait until they form a whole character (or cannot become one);
      - the dummy-prefix space is dropped from the first piece of the text only, which needs to remember
        whether anything has been printed yet.
    `decode()` itself is this class run to the end, so the two cannot disagree.
    """

    def __init__(self, tokenizer: Tokenizer):
        self.tok = tokenizer
        self._bytes = bytearray()  # the current run of byte pieces not yet printed
        self._printed = False  # has any non-empty text been produced?
        self._at_start = True  # sentencepiece's is_bos_ws: may the next piece still lose its leading "▁"?
        self._prefix_eaten = False  # did the previous piece lose its leading "▁"? (bos_ws_seen)
        self._strip_prefix = tokenizer.add_dummy_prefix or tokenizer.remove_extra_whitespaces

    def push(self, token_id) -> str:
        tok = self.tok
        i = tok._check_id(token_id)
        kind = tok._types[i]
        if kind == BYTE:
            self._bytes.append(tok._byte_value[i])
            text, used = _decode_byte_run(bytes(self._bytes), final=False)
            del self._bytes[:used]
            if text:
                self._printed = True
            return text
        out = self._end_byte_run()
        # The library's rule: once a piece has given up its "▁", or any text exists, no later piece loses one.
        if self._prefix_eaten or self._printed:
            self._at_start = False
        if kind == CONTROL:
            piece, self._prefix_eaten = "", False
        elif kind == UNKNOWN:
            piece, self._prefix_eaten = tok.unk_surface, False
        else:
            piece = tok._pieces[i]
            eaten = False
            if self._at_start and self._strip_prefix and piece.startswith(SPACE):
                piece, eaten = piece[1:], True
                if tok.remove_extra_whitespaces:
                    eaten = False  # with whitespace removal every leading "▁" piece loses its space
            self._prefix_eaten = eaten
            piece = piece.replace(SPACE, " ")
        if piece:
            self._printed = True
        return out + piece

    def flush(self) -> str:
        """Print what is still held back (an unfinished character becomes U+FFFD per byte) and reset."""
        out = self._end_byte_run()
        self.__init__(self.tok)
        return out

    def _end_byte_run(self) -> str:
        if not self._bytes:
            return ""
        text, _ = _decode_byte_run(bytes(self._bytes), final=True)
        self._bytes.clear()
        self._printed = True
        return text


# ===========================================================================================================
# 6. tokenizer.json: the Hugging Face `tokenizers` rules
# ===========================================================================================================
# A Llama/Mistral tokenizer.json describes the same kind of model with different rules, and minimoe follows
# *those* rules, so that it gives what `tokenizers.Tokenizer.from_file(path)` gives for the file:
#
#   1. added tokens are cut out of the raw text first (<s>, [INST]...: typed in a prompt, they become their id);
#   2. each remaining segment is normalised: Prepend("▁") (only to a non-empty segment) and Replace(" ", "▁"),
#      or, in newer files, nothing here and a Metaspace pre-tokenizer that replaces spaces and prepends "▁"
#      unless the segment already starts with one ("always"), or only for the segment at offset 0 ("first");
#   3. BPE starts from the segment's characters, each looked up in the vocabulary; a character that is not in
#      it becomes its <0xNN> byte tokens *before* merging (byte_fallback), else the unk token (consecutive
#      ones fused into one with fuse_unk), else it is dropped;
#   4. merges apply by *rank* (their position in the file's merge list), not by piece score (see _merge);
#   5. decode runs the file's decoder chain on the token strings: Replace("▁", " "), ByteFallback (a run of
#      byte tokens is its UTF-8 text if the whole run is valid, else one U+FFFD per byte), Fuse, Strip(" ", 1).
#
# Files outside that family (byte-level BPE such as GPT-2, Llama-3 or tekken, WordPiece, Unigram, other
# normalisers) are refused by name rather than run approximately.

_ADDED_TOKEN_FLAGS = ("single_word", "lstrip", "rstrip", "normalized")


def _hf_byte_value(token: str) -> int | None:
    """The byte a token stands for in the ByteFallback decoder, or None: "<0xNN>" of 6 bytes, NN parsed by
    Rust's u8::from_str_radix(_, 16) (so lower-case hex counts here, unlike in sentencepiece)."""
    if len(token) != 6 or not token.startswith("<0x") or not token.endswith(">"):
        return None
    digits = token[3:5]
    if not re.fullmatch(r"\+?[0-9A-Fa-f]+", digits) or not digits.isascii():
        return None
    return int(digits, 16)


def _json_kind(obj) -> str:
    return obj.get("type", "?") if isinstance(obj, dict) else repr(obj)


def _steps(obj, key: str, source: str) -> list[dict]:
    """A component or a Sequence of them (its list under `key`), as a flat list (None -> [])."""
    if obj is None:
        return []
    if not isinstance(obj, dict):
        raise TokenizerError(f"{source}: expected a tokenizer.json component (an object) or null, found {obj!r}")
    if obj.get("type") == "Sequence":
        out = []
        for sub in obj.get(key, []):
            out.extend(_steps(sub, key, source))
        return out
    return [obj]


class HFTokenizer(Tokenizer):
    """A tokenizer.json of the Llama/Mistral SentencePiece-BPE family, run with Hugging Face `tokenizers` rules.

    Same interface as Tokenizer (encode, decode, stream_decoder, id_to_piece, bos_id/eos_id...), same BPE engine
    in its rank mode. Build one with load_tokenizer(path) or HFTokenizer.from_json(dict).
      encode(text, bos=False) == tokenizers' encode(text, add_special_tokens=False).ids
      encode(text)            == [what the file's post-processor puts before the text] + the above: <s> for
                                 Mistral's files; <s> by name when the post-processor adds nothing
      decode(ids)             == tokenizers' decode(ids, skip_special_tokens=True): special added tokens (<s>,
                                 </s>, <unk> in Mistral's files) print nothing, like CONTROL ids in Tokenizer
    """

    def __init__(self, data: dict, source: str = "<memory>"):
        self.source = source
        model = data.get("model")
        if not isinstance(model, dict):
            raise TokenizerError(f"{source}: JSON without a 'model' entry, so not a Hugging Face tokenizer.json")
        kind = model.get("type") or ("BPE" if "merges" in model else "?")
        family = "the Llama/Mistral family: BPE with byte_fallback, Metaspace or Prepend/Replace normaliser"
        bytelevel = [c for c, key in (("pre_tokenizer", "pretokenizers"), ("decoder", "decoders"),
                                      ("post_processor", "processors"))
                     if any(_json_kind(s) == "ByteLevel" for s in _steps(data.get(c), key, source))]
        if kind != "BPE":
            raise TokenizerError(f"{source}: a {kind} tokenizer.json; minimoe supports SentencePiece-style BPE"
                                 f" tokenizer.json files only ({family})")
        if bytelevel:
            raise TokenizerError(
                f"{source}: a byte-level BPE tokenizer.json (ByteLevel {bytelevel[0]}, as GPT-2, Llama-3 and tekken"
                f" use); minimoe supports SentencePiece-style BPE tokenizer.json files only ({family})")
        for key in ("continuing_subword_prefix", "end_of_word_suffix"):
            if model.get(key):
                raise TokenizerError(f"{source}: BPE {key}={model[key]!r} is not supported ({family})")
        if model.get("dropout") not in (None, 0, 0.0):
            raise TokenizerError(f"{source}: BPE dropout={model['dropout']} makes encoding random; not supported")
        for key in ("truncation", "padding"):
            if data.get(key) is not None:
                raise TokenizerError(f"{source}: '{key}' is set; minimoe encodes without {key}, so remove it")

        # --- the vocabulary: the model's, then the added tokens (their text wins for decoding) ---
        vocab = model.get("vocab")
        if not isinstance(vocab, dict) or not vocab:
            raise TokenizerError(f"{source}: model.vocab should be a non-empty {{token: id}} object")
        self._vocab: dict[str, int] = {}
        id_to_token: dict[int, str] = {}
        for token, i in vocab.items():
            if not isinstance(i, int) or isinstance(i, bool) or i < 0:
                raise TokenizerError(f"{source}: vocab entry {token!r} has id {i!r}; expected an integer >= 0")
            self._vocab[token] = i
            id_to_token.setdefault(i, token)
        self._added: dict[str, int] = {}  # content -> id of every added token
        self._special: set[str] = set()  # contents of special added tokens: cut from text, skipped by decode
        for entry in data.get("added_tokens") or []:
            content, i = entry.get("content"), entry.get("id")
            if not isinstance(content, str) or not content or not isinstance(i, int) or i < 0:
                raise TokenizerError(f"{source}: added token {entry!r} needs a non-empty 'content' and an 'id'")
            flags = [f for f in _ADDED_TOKEN_FLAGS if entry.get(f)]
            if flags:
                raise TokenizerError(f"{source}: added token {content!r} sets {', '.join(flags)}; minimoe supports"
                                     " added tokens matched as typed only (all four flags false)")
            self._added[content] = i
            id_to_token[i] = content
            if entry.get("special"):
                self._special.add(content)
        self.vocab_size = max(id_to_token) + 1
        self._id_to_token = id_to_token
        self._pieces = [id_to_token.get(i) for i in range(self.vocab_size)]
        self._scores = [0.0] * self.vocab_size  # tokenizer.json has merge ranks, not scores
        self._piece_to_id = {**self._vocab, **self._added}
        self._added_re = None
        if self._added:  # leftmost-longest, as tokenizers' Aho-Corasick matcher: longer alternatives first
            alternatives = "|".join(re.escape(t) for t in sorted(self._added, key=len, reverse=True))
            self._added_re = re.compile(alternatives)

        # --- the BPE model ---
        self.byte_fallback = bool(model.get("byte_fallback", False))
        self.fuse_unk = bool(model.get("fuse_unk", False))
        self.ignore_merges = bool(model.get("ignore_merges", False))
        unk = model.get("unk_token")
        if unk is not None and unk not in self._vocab:
            raise TokenizerError(f"{source}: unk_token {unk!r} is not in model.vocab")
        self._unk_token = unk
        self.unk_id = self._vocab[unk] if unk is not None else None
        self._byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
        merges = model.get("merges")
        if not isinstance(merges, list):
            raise TokenizerError(f"{source}: model.merges should be a list")
        ranks: dict[tuple[str, str], int] = {}
        for rank, merge in enumerate(merges):
            pair = merge.split(" ") if isinstance(merge, str) else merge  # "a b" (older files) or ["a", "b"]
            if not isinstance(pair, list) or len(pair) != 2 or not all(isinstance(p, str) for p in pair):
                raise TokenizerError(f"{source}: merge {rank} is {merge!r}; expected [left, right] or 'left right'")
            a, b = pair
            for part in (a, b, a + b):
                if part not in self._vocab:
                    raise TokenizerError(f"{source}: merge {rank} ({a!r}, {b!r}) uses {part!r}, not in model.vocab")
            ranks[(a, b)] = rank  # a pair listed twice keeps its last rank (tokenizers builds a map likewise)
        self._merge_ranks = ranks

        # --- normaliser and pre-tokenizer: what BPE sees ---
        self._normalizers: list[tuple[str, str, str]] = []
        for step in _steps(data.get("normalizer"), "normalizers", source):
            t = step.get("type")
            if t == "Prepend" and isinstance(step.get("prepend"), str):
                self._normalizers.append(("prepend", step["prepend"], ""))
            elif t == "Replace" and isinstance(step.get("pattern"), dict) and "String" in step["pattern"]:
                self._normalizers.append(("replace", step["pattern"]["String"], step.get("content", "")))
            else:
                raise TokenizerError(f"{source}: normalizer {json.dumps(step)[:80]} is not supported; minimoe"
                                     " supports Prepend and Replace (with a string pattern), as Llama/Mistral use")
        self._metaspace = None  # (replacement, prepend_scheme, split) when the pre-tokenizer is Metaspace
        pre = _steps(data.get("pre_tokenizer"), "pretokenizers", source)
        if len(pre) > 1 or (pre and pre[0].get("type") != "Metaspace"):
            raise TokenizerError(f"{source}: pre-tokenizer {', '.join(_json_kind(p) for p in pre)} is not"
                                 f" supported; minimoe supports none or Metaspace ({family})")
        if pre:
            ms = pre[0]
            scheme = ms.get("prepend_scheme")
            if scheme is None:  # files older than tokenizers 0.15 say add_prefix_space instead
                scheme = "always" if ms.get("add_prefix_space", True) else "never"
            if scheme not in ("always", "first", "never") or len(ms.get("replacement", "")) != 1:
                raise TokenizerError(f"{source}: Metaspace {json.dumps(ms)} is not understood")
            self._metaspace = (ms["replacement"], scheme, bool(ms.get("split", True)))

        # --- post-processor: what bos=True and eos=True add ---
        self._prefix: list[int] = []
        self._suffix: list[int] = []
        post = data.get("post_processor")
        if post is not None:
            if _json_kind(post) != "TemplateProcessing":
                raise TokenizerError(f"{source}: post-processor {_json_kind(post)} is not supported;"
                                     " minimoe supports TemplateProcessing (or none)")
            specials = post.get("special_tokens") or {}
            seen_text, single = False, post.get("single") or []
            for item in single:
                if "Sequence" in item:
                    seen_text = True
                elif "SpecialToken" in item:
                    name = item["SpecialToken"].get("id")
                    if name not in specials:
                        raise TokenizerError(f"{source}: template token {name!r} is not in special_tokens")
                    (self._suffix if seen_text else self._prefix).extend(specials[name]["ids"])
        self.bos_id = self._prefix[0] if self._prefix else self._special_id("<s>")
        self.eos_id = self._suffix[-1] if self._suffix else self._special_id("</s>")
        self.pad_id = self._special_id("<pad>")
        if not self._prefix and self.bos_id is not None:
            self._prefix = [self.bos_id]
        if not self._suffix and self.eos_id is not None:
            self._suffix = [self.eos_id]

        # --- piece types, in sentencepiece's words, for piece_type() ---
        self._types = [NORMAL] * self.vocab_size
        for i, token in id_to_token.items():
            if token in self._special:
                self._types[i] = CONTROL
            elif token in self._added:
                self._types[i] = USER_DEFINED
            elif i == self.unk_id:
                self._types[i] = UNKNOWN
            elif _byte_piece_value(token) is not None and self.byte_fallback:
                self._types[i] = BYTE

        # --- the decoder chain ---
        self._decoders = self._read_decoders(data.get("decoder"))

        # Chunking, as in Tokenizer._encode_normalized, with the argument made for tokens instead of pieces:
        # safe when "▁" is a token (so a space run starts with that token), no merge result holds a character
        # other than "▁" right before a "▁" (so no merge can join a chunk to the next one), and no character
        # can vanish (without an unk token or a full set of byte tokens an unknown character is dropped, and
        # "▁z" + "▁" would become the neighbours ▁ ▁, which merge). Metaspace with split=True already cuts
        # words at each "▁", so chunks only matter without it.
        self._ws = SPACE
        crossing = any(any(x != SPACE and y == SPACE for x, y in zip(a + b, (a + b)[1:])) for a, b in ranks)
        all_bytes = self.byte_fallback and all(t in self._vocab for t in self._byte_tokens)
        self.chunked = SPACE in self._vocab and not crossing and (unk is not None or all_bytes)
        self._chunk_re = re.compile(f"{SPACE}*[^{SPACE}]+|{SPACE}+")
        self._word_re = re.compile(f"{SPACE}[^{SPACE}]*|[^{SPACE}]+")
        self._cache: dict[str, list[int]] = {}

    def _special_id(self, content: str) -> int | None:
        return self._added[content] if content in self._special else None

    def _read_decoders(self, obj) -> list[tuple]:
        """The decoder chain as (kind, args) steps; Fuse may be followed only by Strip (as the converters write)."""
        if obj is None:  # no decoder: tokenizers joins the token strings with spaces
            return [("join", " ")]
        out = []
        fused = False
        for step in _steps(obj, "decoders", self.source):
            t = step.get("type")
            if t == "Strip" and step.get("stop", 0) == 0 and len(step.get("content", "")) == 1:
                out.append(("strip", step["content"], int(step.get("start", 0))))
                continue
            if fused:
                raise TokenizerError(f"{self.source}: decoder {t} after Fuse is not supported")
            if t == "Replace" and isinstance(step.get("pattern"), dict) and "String" in step["pattern"]:
                out.append(("replace", step["pattern"]["String"], step.get("content", "")))
            elif t == "ByteFallback":
                out.append(("bytes",))
            elif t == "Fuse":
                out.append(("fuse",))
                fused = True
            elif t == "Metaspace" and len(step.get("replacement", "")) == 1:
                scheme = step.get("prepend_scheme") or ("always" if step.get("add_prefix_space", True) else "never")
                out.append(("metaspace", step["replacement"], scheme != "never"))
            else:
                raise TokenizerError(
                    f"{self.source}: decoder {json.dumps(step)[:80]} is not supported; minimoe supports"
                    " Replace, ByteFallback, Fuse, Strip (start only) and Metaspace, as Llama/Mistral use")
        return out

    @classmethod
    def from_json(cls, data, source: str = "<memory>") -> "HFTokenizer":
        if not isinstance(data, dict) or "model" not in data:
            raise TokenizerError(f"{source}: JSON without a 'model' entry, so not a Hugging Face tokenizer.json")
        return cls(data, source)

    def __repr__(self) -> str:
        return (f"HFTokenizer({self.source!r}, vocab_size={self.vocab_size}, bos={self.bos_id}, eos={self.eos_id},"
                f" merges={len(self._merge_ranks)})")

    # --- encode -----------------------------------------------------------------------------------------------
    def normalize(self, text: str) -> str:
        """The file's normaliser on one segment (the text between added tokens)."""
        for kind, a, b in self._normalizers:
            if kind == "prepend":
                text = a + text if text else text
            else:
                text = text.replace(a, b)
        return text

    def _pre_tokenize(self, text: str, at_start: bool) -> list[str]:
        """Metaspace: spaces -> "▁", a "▁" in front unless one is there already, then (split=True) one word per
        "▁" (each "▁" starts a word). Without a pre-tokenizer the segment is one word."""
        if self._metaspace is None:
            return [text] if text else []
        rep, scheme, split = self._metaspace
        text = text.replace(" ", rep)
        if (scheme == "always" or (scheme == "first" and at_start)) and not text.startswith(rep):
            text = rep + text
        if not split:
            return [text] if text else []
        return re.findall(f"{re.escape(rep)}[^{re.escape(rep)}]*|[^{re.escape(rep)}]+", text)

    def encode(self, text: str, bos: bool = True, eos: bool = False) -> list[int]:
        """Token ids of `text` as tokenizers gives them; bos/eos add what the post-processor puts around it."""
        if not isinstance(text, str):
            raise TypeError(f"encode() takes a str, found {type(text).__name__}")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise TokenizerError(
                f"text has a lone surrogate {text[e.start]!r} at index {e.start}: expected text that can be"
                " written as UTF-8 (tokenizers refuses it too)"
            ) from None
        ids = []
        if bos:
            if not self._prefix:
                raise TokenizerError(f"{self.source} has no <s> special token, so bos=True is impossible")
            ids.extend(self._prefix)
        for segment, start, added_id in self._split_added(text):
            if added_id is not None:
                ids.append(added_id)
                continue
            for word in self._pre_tokenize(self.normalize(segment), start == 0):
                ids.extend(self._encode_word(word))
        if eos:
            if not self._suffix:
                raise TokenizerError(f"{self.source} has no </s> special token, so eos=True is impossible")
            ids.extend(self._suffix)
        return ids

    def _split_added(self, text: str):
        """(segment, start offset, None) for text between added tokens, (content, start, id) for each one."""
        if self._added_re is None:
            if text:
                yield text, 0, None
            return
        pos = 0
        for m in self._added_re.finditer(text):
            if m.start() > pos:
                yield text[pos : m.start()], pos, None
            yield m.group(), m.start(), self._added[m.group()]
            pos = m.end()
        if pos < len(text):
            yield text[pos:], pos, None

    def _encode_word(self, word: str) -> list[int]:
        """One word through BPE, chunk by chunk (with a cache) when the vocabulary allows it."""
        if self.ignore_merges and word in self._vocab:  # the whole word is a token: no merging at all
            return [self._vocab[word]]
        cache = self._cache
        if len(cache) > 200_000:
            cache.clear()
        chunks = self._chunk_re.findall(word) if self.chunked else [word]
        ids = []
        for chunk in chunks:
            cached = cache.get(chunk)
            if cached is None:
                cached = cache[chunk] = self._bpe_ids(chunk)
            ids.extend(cached)
        return ids

    def _bpe_ids(self, word: str) -> list[int]:
        """tokenizers' BPE on one word: characters -> tokens (bytes or unk if unknown) -> merges by rank -> ids."""
        vocab = self._vocab
        symbols = []
        # tokenizers keeps an unknown character's <unk> pending and writes it only when a character of the
        # vocabulary (or the end of the word) comes: byte-fallback tokens in between are written first, and
        # with fuse_unk the pending <unk> absorbs later unknowns ("zéz" -> ▁ <0xC3> <0xA9> <unk>).
        pending_unk = False
        for ch in word:
            if ch in vocab:
                if pending_unk:
                    symbols.append(self._unk_token)
                    pending_unk = False
                symbols.append(ch)
                continue
            if self.byte_fallback:
                tokens = [self._byte_tokens[b] for b in ch.encode("utf-8")]
                if all(t in vocab for t in tokens):
                    symbols.extend(tokens)
                    continue
            if self._unk_token is not None:
                if pending_unk and not self.fuse_unk:
                    symbols.append(self._unk_token)
                pending_unk = True
            # no unk token: tokenizers drops the character
        if pending_unk:
            symbols.append(self._unk_token)
        symbols, _ = self._merge(symbols, None)
        return [vocab[s] for s in symbols]

    # --- decode -----------------------------------------------------------------------------------------------
    def decode(self, ids) -> str:
        """Text of ids, as tokenizers' decode(ids, skip_special_tokens=True) gives it."""
        stream = HFStreamDecoder(self)
        return "".join([stream.push(i) for i in ids]) + stream.flush()

    def stream_decoder(self) -> "HFStreamDecoder":
        return HFStreamDecoder(self)

    def _check_id(self, i) -> int:
        i = super()._check_id(i)
        if self._pieces[i] is None:
            raise TokenizerError(f"token id {i} is not assigned to any token in {self.source}")
        return i

    def score(self, i: int) -> float:
        raise TokenizerError(f"{self.source} is a tokenizer.json: its pieces have merge ranks, not scores")


class HFStreamDecoder:
    """The file's decoder chain, one id at a time; push()s + flush() concatenate to exactly decode(ids).

    Every step before Fuse works token by token, so each runs as it comes, except ByteFallback: a run of byte
    tokens is its text only if the *whole* run is valid UTF-8 (else one U+FFFD per byte), so the run is held
    until a token that is not a byte ends it (or flush). A character made of byte tokens therefore appears
    one token later than with Tokenizer's streaming decoder, but never as half a character. After Fuse the
    text is one string, and Strip(" ", start=1) removes up to one leading space of the *whole* text: the first
    characters are held until there are enough of them to decide.
    """

    def __init__(self, tokenizer: HFTokenizer):
        self.tok = tokenizer
        chain = tokenizer._decoders
        cut = next((k for k, step in enumerate(chain) if step[0] == "fuse"), None)
        self._per_token = chain if cut is None else chain[:cut]
        self._whole = [] if cut is None else [s for s in chain[cut + 1 :] if s[0] == "strip"]
        self._bytes = bytearray()  # the held run, for the step "bytes"
        self._counts = [0] * len(self._per_token)  # tokens seen by each step (Metaspace's "first token")
        self._head = ""  # the start of the fused text, held until the whole-text strips are decided
        self._head_done = not self._whole
        self._need = sum(s[2] for s in self._whole)  # characters needed to decide them

    def push(self, token_id) -> str:
        tok = self.tok
        i = tok._check_id(token_id)
        token = tok._id_to_token[i]
        if token in tok._special:
            return ""  # skip_special_tokens=True
        return self._out(self._run(0, [token]))

    def flush(self) -> str:
        """Settle a held byte run and the held start of the text, and reset."""
        # a held byte run at step k flows through the steps after it
        out = []
        for k, step in enumerate(self._per_token):
            if step[0] == "bytes" and self._bytes:
                out.extend(self._run(k + 1, self._settle_bytes()))
        text = self._out(out, final=True)
        self.__init__(self.tok)
        return text

    def _settle_bytes(self) -> list[str]:
        run = bytes(self._bytes)
        self._bytes.clear()
        try:
            return [run.decode("utf-8")]
        except UnicodeDecodeError:
            return [REPLACEMENT_CHAR] * len(run)

    def _run(self, k: int, tokens: list[str]) -> list[str]:
        """Pass tokens through per-token steps k, k+1...; return what comes out of the last one."""
        for k in range(k, len(self._per_token)):
            step = self._per_token[k]
            out = []
            for token in tokens:
                kind = step[0]
                if kind == "replace":
                    out.append(token.replace(step[1], step[2]))
                elif kind == "strip":
                    n = 0
                    while n < step[2] and n < len(token) and token[n] == step[1]:
                        n += 1
                    out.append(token[n:])
                elif kind == "join":
                    out.append(token if self._counts[k] == 0 else step[1] + token)
                elif kind == "metaspace":
                    first = self._counts[k] == 0 and step[2]
                    out.append(token.replace(step[1], "" if first else " "))
                elif kind == "bytes":
                    value = _hf_byte_value(token)
                    if value is not None:
                        self._bytes.append(value)
                    else:
                        if self._bytes:
                            out.extend(self._settle_bytes())
                        out.append(token)
                self._counts[k] += 1
            tokens = out
        return tokens

    def _out(self, tokens: list[str], final: bool = False) -> str:
        """Join what left the per-token steps; apply the whole-text strips to the head of the text."""
        text = "".join(tokens)
        if self._head_done:
            return text
        self._head += text
        if len(self._head) < self._need and not final:
            return ""
        head = self._head
        for _, content, start in self._whole:
            n = 0
            while n < start and n < len(head) and head[n] == content:
                n += 1
            head = head[n:]
        self._head, self._head_done = "", True
        return head


# ===========================================================================================================
# Loading from a path
# ===========================================================================================================


# The largest SentencePiece models (256k pieces) are a few MiB; anything bigger is not a tokenizer.
MAX_TOKENIZER_BYTES = 64 * 2**20


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """Load a tokenizer from a checkpoint directory, a tokenizer.model file or a tokenizer.json file.

    A directory's tokenizer.model is preferred when it has both: it is the reference format (sentencepiece's
    ids), and a tokenizer.json converted from it can disagree with it (docs/tokenizer.md). A tokenizer.json is
    run with Hugging Face `tokenizers` rules (HFTokenizer), which is what that file means.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        for name in ("tokenizer.model", "tokenizer.json"):
            candidate = os.path.join(path, name)
            if os.path.isfile(candidate):
                return load_tokenizer(candidate)
        raise TokenizerError(f"{path}: no tokenizer.model or tokenizer.json in this directory")
    if not os.path.isfile(path):
        raise TokenizerError(f"{path}: no such file; expected a tokenizer.model, a tokenizer.json or a directory")
    size = os.path.getsize(path)
    if size > MAX_TOKENIZER_BYTES:  # a weights file passed by mistake: refuse before reading gigabytes
        raise TokenizerError(
            f"{path}: {size / 2**20:.0f} MiB is far too large for a tokenizer (expected at most"
            f" {MAX_TOKENIZER_BYTES // 2**20} MiB; Mistral's tokenizer.model is 0.5 MiB)"
        )
    with open(path, "rb") as f:
        buf = f.read()
    if path.endswith(".json") or buf[:1] in (b"{", b"[") or buf.lstrip()[:1] == b"{":
        return _tokenizer_from_json(buf, path)
    return Tokenizer.from_model_bytes(buf, path)


def _tokenizer_from_json(buf: bytes, source: str) -> HFTokenizer:
    """Parse a tokenizer.json and build an HFTokenizer (which refuses files outside the Llama/Mistral family)."""
    try:
        data = json.loads(buf.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise TokenizerError(
            f"{source}: not valid JSON ({e}); expected a SentencePiece tokenizer.model or a tokenizer.json"
        ) from None
    try:
        return HFTokenizer.from_json(data, source)
    except (KeyError, TypeError, AttributeError) as e:  # a structure the checks above did not foresee
        raise TokenizerError(f"{source}: malformed tokenizer.json ({type(e).__name__}: {e})") from None
