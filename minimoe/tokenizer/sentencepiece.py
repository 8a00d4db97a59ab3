"""Parts 2-5: the SentencePiece BPE tokenizer (`tokenizer.model`): the model, encode, decode, streaming decode."""

from __future__ import annotations

import re

from minimoe.tokenizer.base import (BYTE, CONTROL, DEFAULT_UNK_SURFACE, MODEL_TYPES, NORMAL, REPLACEMENT_CHAR,  # noqa: F401
                                    SPACE, TYPE_NAMES, UNKNOWN, UNUSED, USER_DEFINED, TokenizerError, Vocabulary,
                                    _byte_piece_value, _decode_byte_run, _utf8_length)
from minimoe.tokenizer.bpe import merge
from minimoe.tokenizer.protobuf import _parse_model_proto


class Tokenizer(Vocabulary):
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

    # Vocabulary lookups: id_to_piece, piece_to_id, piece_type, len() come from Vocabulary (base.py)
    def score(self, i: int) -> float:
        return self._scores[self._check_id(i)]

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
        track = self._unused if self._has_unused else None
        if self._user_defined is None:
            return merge(list(text), scores=self._merge_score, track=track)
        matches = list(self._user_defined.finditer(text))
        frozen = [m.lastgroup == "user" for m in matches]  # a user-defined piece never merges further
        return merge([m.group() for m in matches], scores=self._merge_score, frozen=frozen, track=track)

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
