"""A from-scratch SentencePiece BPE tokenizer that gives the same ids and text as `sentencepiece` itself.

Mistral-7B (and so Confinus-2x7B) ships its tokenizer as `tokenizer.model`: a SentencePiece BPE model with
32000 pieces, byte fallback and a dummy prefix space. This module reads that file and runs the same algorithm
as the reference C++ library, in six parts, one small file each (read in this order):

    base.py           the error, the piece types, byte pieces, and `Vocabulary` (id <-> piece lookups both share)
    1. protobuf.py    the protobuf wire format: a 40-line reader for the file (no protobuf package needed)
       bpe.py         the BPE merge loop, one function, by piece score or by merge rank
    2-5. sentencepiece.py
                      the model (pieces, scores, types, the normaliser's switches); encode: normalise -> chunks ->
                      merge each -> ids, byte fallback; decode the sentencepiece way (control ids vanish, bad
                      bytes -> U+FFFD); streaming decode (one id at a time, never half a character)
    6. hf_json.py     a tokenizer.json: the same loop with Hugging Face `tokenizers` rules (merge ranks, not
                      scores), its refusals of what minimoe does not support, its streaming decode
    this file         load_tokenizer: a directory, a tokenizer.model or a tokenizer.json

docs/tokenizer.md walks through each part with worked examples and the measured speed.

Pure Python standard library: no torch, nothing else from minimoe, so `import minimoe.tokenizer` is instant.
"""

from __future__ import annotations

import json
import os

from minimoe.tokenizer.base import (BYTE, CONTROL, DEFAULT_UNK_SURFACE, MODEL_TYPES, NORMAL,  # noqa: F401
                                    REPLACEMENT_CHAR, SPACE, TYPE_NAMES, UNKNOWN, UNUSED, USER_DEFINED,
                                    TokenizerError, Vocabulary, _byte_piece_value, _decode_byte_run,
                                    _utf8_length)
from minimoe.tokenizer.bpe import merge  # noqa: F401
from minimoe.tokenizer.hf_json import HFStreamDecoder, HFTokenizer  # noqa: F401
from minimoe.tokenizer.protobuf import _fields, _parse_model_proto, _read_varint  # noqa: F401
from minimoe.tokenizer.sentencepiece import StreamDecoder, Tokenizer  # noqa: F401

__all__ = ["Tokenizer", "StreamDecoder", "HFTokenizer", "HFStreamDecoder", "TokenizerError", "Vocabulary",
           "load_tokenizer"]


MAX_TOKENIZER_BYTES = 64 * 2**20


def load_tokenizer(path: str | os.PathLike) -> Vocabulary:
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
