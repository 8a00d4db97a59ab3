"""Part 6: a Hugging Face `tokenizer.json` of the Llama/Mistral family, run with `tokenizers`' rules."""

from __future__ import annotations

import json
import re

from minimoe.tokenizer.base import (BYTE, CONTROL, NORMAL, REPLACEMENT_CHAR, SPACE, UNKNOWN,  # noqa: F401
                                    USER_DEFINED, TokenizerError, Vocabulary, _byte_piece_value,
                                    _decode_byte_run, _utf8_length)
from minimoe.tokenizer.bpe import merge


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


class HFTokenizer(Vocabulary):
    """A tokenizer.json of the Llama/Mistral SentencePiece-BPE family, run with Hugging Face `tokenizers` rules.

    Same interface as Tokenizer (encode, decode, stream_decoder, id_to_piece, bos_id/eos_id...), the same BPE
    merge loop (bpe.merge) by merge rank instead of piece score. Build one with load_tokenizer(path) or HFTokenizer.from_json(dict).
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
        symbols, _ = merge(symbols, ranks=self._merge_ranks)
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
