"""What every part of the tokenizer shares: the error, the piece types, SentencePiece's byte pieces, and the
vocabulary lookups both tokenizers answer (`Vocabulary`)."""

from __future__ import annotations


class TokenizerError(ValueError):
    """A tokenizer file or an input that minimoe cannot use; the message names the file or id, expected and found."""


# The meta symbol SentencePiece writes for a space: U+2581 LOWER ONE EIGHTH BLOCK, three bytes in UTF-8.
SPACE = "\u2581"  # "▁"
# What `decode` prints for the <unk> id unless the model says otherwise: U+2047 DOUBLE QUESTION MARK in spaces.
DEFAULT_UNK_SURFACE = " \u2047 "
REPLACEMENT_CHAR = "\ufffd"

# The piece types of sentencepiece_model.proto (ModelProto.SentencePiece.Type).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
TYPE_NAMES = {1: "NORMAL", 2: "UNKNOWN", 3: "CONTROL", 4: "USER_DEFINED", 5: "UNUSED", 6: "BYTE"}
MODEL_TYPES = {1: "UNIGRAM", 2: "BPE", 3: "WORD", 4: "CHAR"}


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


class Vocabulary:
    """The half of a tokenizer both formats share: ids <-> pieces and their types, with one clear error for a bad id.

    A subclass sets, in its __init__: source (for messages), vocab_size, bos_id, eos_id, unk_id, _pieces (id ->
    piece, None for an id no token has), _piece_to_id and _types (id -> a piece type above); and implements
    encode, decode and stream_decoder. `Tokenizer` (sentencepiece.py) and `HFTokenizer` (hf_json.py) are the two.
    """

    source: str
    vocab_size: int

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

    def __len__(self) -> int:
        return self.vocab_size

    def encode(self, text: str, bos: bool = True, eos: bool = False) -> list[int]:
        raise NotImplementedError

    def decode(self, ids) -> str:
        raise NotImplementedError

    def stream_decoder(self):
        raise NotImplementedError
