"""minimoe.tokenizer against the reference: `sentencepiece` on Mistral-7B's real tokenizer.model.

Every property is checked against an independent implementation (the sentencepiece C++ library, or Hugging Face
`tokenizers` for tokenizer.json), never against minimoe itself, except where the property *is* self-consistency
(streaming decode == decode, chunked BPE == whole-string BPE).
"""

import hashlib
import json
import os
import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minimoe.tokenizer import (
    BYTE,
    CONTROL,
    NORMAL,
    UNUSED,
    USER_DEFINED,
    HFTokenizer,
    Tokenizer,
    TokenizerError,
    _decode_byte_run,
    _fields,
    _read_varint,
    load_tokenizer,
)

MISTRAL_SHA256 = "dadfd56d766715c61d2ef780a525ab43b8e6da4de6865bda3d95fdef5e134055"  # docs/facts.md#tokenizer

# A moderate number of Hypothesis examples for the cheap parity properties (each example takes ~1 ms); the
# profile from conftest.py still wins when it asks for more.
MANY = max(200, settings().max_examples)


def _mistral_data(name: str) -> str:
    mistral_common = pytest.importorskip("mistral_common", reason="mistral_common ships Mistral's tokenizer.model")
    path = os.path.join(os.path.dirname(mistral_common.__file__), "data", name)
    if not os.path.isfile(path):
        pytest.skip(f"this mistral_common version has no data/{name}")
    return path


@pytest.fixture(scope="module")
def model_path():
    path = _mistral_data("tokenizer.model.v1")
    with open(path, "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == MISTRAL_SHA256, "not the Mistral-7B v0.1 tokenizer"
    return path


@pytest.fixture(scope="module")
def spm_module():
    return pytest.importorskip("sentencepiece", reason="sentencepiece is the reference implementation")


@pytest.fixture(scope="module")
def sp(model_path, spm_module):
    return spm_module.SentencePieceProcessor(model_file=model_path)


@pytest.fixture(scope="module")
def tok(model_path):
    return load_tokenizer(model_path)


# -----------------------------------------------------------------------------------------------------------
# The parity corpus: >= 2000 strings, generated deterministically (same strings on every run and machine).
# -----------------------------------------------------------------------------------------------------------
WORDS = (
    "the of and to in is was that for on with as by at from his her it an were are which this be or has had "
    "not but what all when there can more if no out so said who them some could time about tokenizer Mixtral "
    "expert router attention quantization kernel memory bandwidth throughput latency Hello World Python GPU "
    "CPU int4 fp16 AWQ naïve café résumé façade coöperate Zürich don't it's we'll they're O'Brien e-mail "
    "state-of-the-art U.S.A. Ph.D. i.e. e.g."
).split()


def make_corpus(n: int = 2400, seed: int = 1234) -> list[str]:
    """English, code, numbers, whitespace runs, CJK, emoji, combining marks, zero-width and control characters,
    other scripts, the text of special pieces, alone and mixed, with leading/trailing spaces."""
    rng = random.Random(seed)

    def pick(seq):
        return rng.choice(seq)

    def chars(lo, hi, k):
        return "".join(chr(rng.randint(lo, hi)) for _ in range(k))

    def sentence():
        words = [pick(WORDS) for _ in range(rng.randint(1, 18))]
        if rng.random() < 0.5:
            words[0] = words[0].capitalize()
        return " ".join(words) + pick([".", "!", "?", ",", ";", ":", "", "..."])

    def code():
        name = "".join(pick("abcdefghijklmnopqrstuvwxyz_") for _ in range(rng.randint(1, 12)))
        return pick([
            f"def {name}(x, y=2):\n    return x ** y  # square\n",
            f"for (int {name} = 0; {name} < n; ++{name}) {{\n\tsum += a[{name}];\n}}",
            f"{name} = {{'a': [1, 2, 3], \"b\": None}}\n",
            f"    if {name} != None and not {name}.empty():\r\n        print(f\"{{{name}!r}}\")",
            f"<div class=\"{name}\">&nbsp;&lt;tag&gt;</div>",
            f"SELECT {name}, COUNT(*) FROM t WHERE x >= 3 GROUP BY {name};",
            f"#include <stdio.h>\nint main(void) {{ printf(\"%d\\n\", {rng.randint(0, 99999)}); }}",
            f"const {name} = async () => {{ await fetch(`/api/${{id}}`); }};",
        ])

    def number():
        return pick([
            str(rng.randint(0, 10 ** rng.randint(1, 20))),
            f"{rng.uniform(-1e6, 1e6):.{rng.randint(0, 9)}f}",
            f"{rng.random():e}",
            f"{rng.randint(1, 9999):,}",
            f"{rng.randint(1900, 2100)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
            f"+1 ({rng.randint(100, 999)}) {rng.randint(100, 999)}-{rng.randint(1000, 9999)}",
            "0x" + chars(0x61, 0x66, 8),
            "3.14159265358979",
            f"{rng.randint(0, 100)}%",
            "١٢٣٤٥",
            "½ ¾ ⅓ ²³",
            "Ⅻ ⅻ",
        ])

    def spaces():
        glyphs = [" ", " ", " ", "\t", "\n", "\r\n", "\r", "\u00a0", "\u3000", "\u2581", "\u2003", "\v", "\f"]
        return "".join(pick(glyphs) for _ in range(rng.randint(1, 12)))

    def cjk():
        return pick([
            chars(0x4E00, 0x9FFF, rng.randint(1, 40)),
            chars(0x3040, 0x309F, rng.randint(1, 20)),
            chars(0x30A0, 0x30FF, rng.randint(1, 20)),
            chars(0xAC00, 0xD7A3, rng.randint(1, 20)),
            "東京は日本の首都です。",
            "我爱自然语言处理！",
            "한국어 텍스트입니다",
            chars(0x20000, 0x2A6DF, rng.randint(1, 5)),  # CJK extension B: four UTF-8 bytes each
        ])

    def emoji():
        return pick([
            "🙂", "👍🏽", "👨‍👩‍👧‍👦", "🏳️‍🌈", "🇫🇷🇯🇵", "❤️", "🤖", "😀" * rng.randint(1, 5),
            chars(0x1F300, 0x1FAFF, rng.randint(1, 6)), "☕️", "©®™", "1️⃣",
        ])

    def combining():
        base = pick(["e", "a", "o", "n", "ı", "ᄀ", " ", ""])
        return base + "".join(chr(rng.randint(0x300, 0x36F)) for _ in range(rng.randint(1, 6)))

    def zero_width():
        return pick(["\u200b", "\u200c", "\u200d", "\ufeff", "\u2060", "\u00ad", "\u200e", "\u200f", "\u202e"])

    def control():
        return pick([chr(rng.randint(0, 0x1F)), "\x7f", chr(rng.randint(0x80, 0x9F)), "\x00", "\x1b[31m"])

    def scripts():
        return pick([
            "Привет, мир!", "Γειά σου Κόσμε", "مرحبا بالعالم", "שלום עולם", "नमस्ते दुनिया", "สวัสดีชาวโลก",
            "Xin chào thế giới", "ﬁﬂ ﬀ", "𝐀𝐁𝐂 𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "İstanbul ıi", "straße STRASSE", "\ue000\uf8ff",
            "\U000f0000\U0010fffd",
        ])

    def special():  # the *text* of special pieces is ordinary text to sentencepiece
        return pick(["<s>", "</s>", "<unk>", "<0x41>", "<pad>", "[INST]", "[/INST]", "[REF]", "▁", "▁▁", "<<s>>",
                     "\\n", "\u2047"])

    def vocab_like():
        return "".join(pick(["▁", " ", ""]) + pick(WORDS) for _ in range(rng.randint(1, 4)))

    parts = [sentence, code, number, spaces, cjk, emoji, combining, zero_width, control, scripts, special,
             vocab_like]
    corpus = ["", " ", "  ", "\t", "\n", "\r\n", " \n ", "\u3000", "\u00a0", "▁", "a", "A", "  leading",
              "trailing  ", " both ", "\n\nx\n\n", " " * 40, "a" + " " * 33 + "b", "\t" * 9]
    while len(corpus) < n:
        if rng.random() < 0.35:
            s = pick(parts)()
        else:
            s = "".join(pick(parts)() + pick(["", " ", "  ", "\n", "\t", " \n"]) for _ in range(rng.randint(2, 8)))
        if rng.random() < 0.15:
            s = " " * rng.randint(1, 4) + s
        if rng.random() < 0.15:
            s = s + " " * rng.randint(1, 4)
        corpus.append(s)
    return corpus


CORPUS = make_corpus()


def assert_same_as_spm(tok, sp, texts, *, label=""):
    """ids (with <s>) and decoded text identical to sentencepiece for every text; report the first failures."""
    failures = []
    for text in texts:
        want = sp.encode(text, add_bos=True)
        got = tok.encode(text)
        if got != want:
            failures.append(f"ids for {text!r}: sentencepiece {want[:16]}, minimoe {got[:16]}")
        elif tok.decode(got) != sp.decode(want):
            failures.append(f"decode of {text!r}: sentencepiece {sp.decode(want)!r}, minimoe {tok.decode(got)!r}")
    assert not failures, f"{label}{len(failures)} of {len(texts)} differ:\n" + "\n".join(failures[:10])


def test_corpus_covers_what_the_issue_lists():
    assert len(CORPUS) >= 2000
    joined = "".join(CORPUS)
    assert "" in CORPUS and " " in CORPUS
    for needle in ["\t", "\n", "  ", "東", "🙂", "\u0301", "\u200b", "\x00", "\x7f", "<s>", "▁", "def ", "3.14"]:
        assert needle in joined, needle
    assert any(s and not s.strip() for s in CORPUS)  # whitespace-only strings
    assert any(s.startswith(" ") for s in CORPUS) and any(s.endswith(" ") for s in CORPUS)


# -----------------------------------------------------------------------------------------------------------
# Parity with sentencepiece on Mistral-7B's tokenizer.model
# -----------------------------------------------------------------------------------------------------------
def test_reads_mistral_model(tok, sp):
    assert tok.vocab_size == sp.get_piece_size() == 32000
    assert (tok.unk_id, tok.bos_id, tok.eos_id, tok.pad_id) == (0, 1, 2, None)
    assert (sp.unk_id(), sp.bos_id(), sp.eos_id(), sp.pad_id()) == (0, 1, 2, -1)
    for i in range(tok.vocab_size):
        assert tok.id_to_piece(i) == sp.id_to_piece(i)
        assert tok.score(i) == sp.get_score(i)
    assert tok.piece_type(3) == "BYTE" and tok.id_to_piece(3) == "<0x00>"
    assert tok.piece_to_id("▁the") == sp.piece_to_id("▁the")
    assert tok.piece_to_id("not a piece") == sp.piece_to_id("not a piece") == 0


def test_encode_decode_match_sentencepiece_on_corpus(tok, sp):
    assert_same_as_spm(tok, sp, CORPUS)


def test_bos_eos_flags(tok, sp):
    for text in ["Hello world", "", " "]:
        assert tok.encode(text, bos=False) == sp.encode(text)
        assert tok.encode(text, bos=True, eos=True) == sp.encode(text, add_bos=True, add_eos=True)
        assert tok.encode(text, bos=False, eos=True) == sp.encode(text, add_eos=True)
    assert tok.encode("") == [1]


def test_known_tokenizations(tok):
    # Worked examples from docs/tokenizer.md: the dummy prefix, a space run, byte fallback for "\n".
    assert [tok.id_to_piece(i) for i in tok.encode("Hello world", bos=False)] == ["▁Hello", "▁world"]
    assert [tok.id_to_piece(i) for i in tok.encode("hello  world", bos=False)] == ["▁hell", "o", "▁", "▁world"]
    assert [tok.id_to_piece(i) for i in tok.encode("a\nb", bos=False)] == ["▁a", "<0x0A>", "b"]


@settings(max_examples=MANY)
@given(st.text())
def test_hypothesis_unicode_text_matches_sentencepiece(tok, sp, text):
    assert_same_as_spm(tok, sp, [text])


# Dense in the characters that decide merges: spaces next to words, the space symbol itself, bytes, marks.
TRICKY = st.sampled_from(list(" \t\n\r▁ab<>s/0.éé日本🙂\u200b\x00") + [" ", "  ", "the", "ing", "<s>"])


@settings(max_examples=MANY)
@given(st.lists(TRICKY, max_size=20).map("".join))
def test_hypothesis_tricky_text_matches_sentencepiece(tok, sp, text):
    assert_same_as_spm(tok, sp, [text])


def test_chunked_bpe_equals_whole_string_bpe(model_path):
    # The speed-up splits the normalised text before each run of "▁" (see Tokenizer._encode_normalized);
    # BPE over the whole string, as the library does it, must give the same ids.
    chunked = load_tokenizer(model_path)
    whole = load_tokenizer(model_path)
    assert chunked.chunked
    whole.chunked = False
    for text in CORPUS[:800]:
        assert chunked.encode(text) == whole.encode(text), text


# -----------------------------------------------------------------------------------------------------------
# Decode and streaming decode
# -----------------------------------------------------------------------------------------------------------
# Ids that stress decode: control ids, <unk>, byte pieces (valid and broken UTF-8), "▁" pieces, anything.
ANY_ID = st.one_of(
    st.sampled_from([0, 1, 2]),
    st.integers(3, 258),  # <0x00>..<0xFF>
    st.sampled_from([3 + 0xF0, 3 + 0x9F, 3 + 0xA4, 3 + 0x96, 3 + 0xE9, 3 + 0xBF, 3 + 0x8F, 3 + 0xC3, 3 + 0xA9]),
    st.sampled_from([28705, 259, 260, 1014, 22557]),  # "▁", "▁▁", "▁▁▁▁", "▁the", "▁Hello"
    st.integers(0, 31999),
)


@settings(max_examples=MANY)
@given(st.lists(ANY_ID, max_size=24))
def test_hypothesis_decode_matches_sentencepiece(tok, sp, ids):
    assert tok.decode(ids) == sp.decode(ids)


@settings(max_examples=MANY)
@given(st.lists(ANY_ID, max_size=24))
def test_hypothesis_stream_decode_concatenates_to_decode(tok, ids):
    stream = tok.stream_decoder()
    pieces = [stream.push(i) for i in ids]
    assert "".join(pieces) + stream.flush() == tok.decode(ids)


def test_stream_decoder_holds_partial_utf8(tok):
    # "🤖" is not a piece: it arrives as four byte pieces and appears only when the fourth one does.
    ids = tok.encode("🤖本", bos=False)
    assert [tok.id_to_piece(i) for i in ids] == ["▁", "<0xF0>", "<0x9F>", "<0xA4>", "<0x96>", "本"]
    stream = tok.stream_decoder()
    assert [stream.push(i) for i in ids] == ["", "", "", "", "🤖", "本"]
    assert stream.flush() == ""
    # An unfinished character is settled at flush (one U+FFFD per byte, as sentencepiece) and the decoder resets.
    assert stream.push(3 + 0xF0) == "" and stream.push(3 + 0x9F) == "" and stream.flush() == "\ufffd\ufffd"
    assert stream.push(tok.piece_to_id("▁Hello")) == "Hello"


def test_stream_decoder_leading_space_rule(tok):
    stream = tok.stream_decoder()
    out = [stream.push(i) for i in [1, tok.piece_to_id("▁Hello"), tok.piece_to_id("▁world"), 2]]
    assert out == ["", "Hello", " world", ""]
    assert tok.decode([tok.piece_to_id("▁"), tok.piece_to_id("▁world")]) == " world"  # only the first "▁" goes


def test_sentencepiece_byte_run_rules():
    # Each byte that does not begin a complete valid character is one U+FFFD, on its own.
    assert _decode_byte_run(b"\xe6\x97", final=True) == ("\ufffd\ufffd", 2)
    assert _decode_byte_run(b"\xe6\x97", final=False) == ("", 0)
    assert _decode_byte_run(b"\xe6\x97\xa5A", final=False) == ("日A", 4)
    assert _decode_byte_run(b"\xc0\xaf", final=True) == ("\ufffd\ufffd", 2)  # overlong "/"
    assert _decode_byte_run(b"\xed\xa0\x80", final=True) == ("\ufffd" * 3, 3)  # a surrogate
    assert _decode_byte_run(b"\xf4\x90\x80\x80", final=True) == ("\ufffd" * 4, 4)  # above U+10FFFF
    assert _decode_byte_run(b"\xef\xbf\xbd", final=True) == ("\ufffd", 3)  # U+FFFD itself is valid


# -----------------------------------------------------------------------------------------------------------
# Other SentencePiece models: Mistral's later tokenizers (user-defined pieces) and edited copies of v1
# -----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["mistral_instruct_tokenizer_240323.model.v3",
                                  "mistral_instruct_tokenizer_241114.model.v7"])
def test_later_mistral_models_with_user_defined_pieces(spm_module, name):
    path = _mistral_data(name)
    sp = spm_module.SentencePieceProcessor(model_file=path)
    tok = load_tokenizer(path)
    user_defined = [tok.id_to_piece(i) for i in range(tok.vocab_size) if tok._types[i] == USER_DEFINED]
    assert user_defined, "these models carry user-defined pieces"
    rng = random.Random(7)
    texts = CORPUS[:600] + [
        " ".join(rng.choice(user_defined + ["x", "[", "]", "", "REF"]) for _ in range(rng.randint(1, 6)))
        for _ in range(200)
    ]
    assert_same_as_spm(tok, sp, texts, label=f"{name}: ")


# A protobuf *writer*, just enough to edit a model: the inverse of the reader under test.
def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, wire: int, value) -> bytes:
    key = _varint(number << 3 | wire)
    if wire == 0:
        return key + _varint(value)
    if wire == 2:
        return key + _varint(len(value)) + value
    return key + value  # fixed-width, already packed


def _edit_model(buf, *, normalizer=None, trainer=None, piece_filter=None, piece_type=None):
    """Rewrite a .model: set normalizer_spec / trainer_spec varint fields, drop or retype pieces."""
    out = b""
    for number, wire, value in _fields(buf):
        if number == 1:
            sub = {f: v for f, _, v in _fields(value)}
            if piece_filter is not None and not piece_filter(sub):
                continue
            if piece_type is not None:
                new_type = piece_type(sub)
                if new_type is not None:
                    value = b"".join(_field(f, w, v) for f, w, v in _fields(value) if f != 3) + _field(3, 0, new_type)
        for edit, spec_number in ((normalizer, 3), (trainer, 2)):
            if edit and number == spec_number:
                kept = [(f, w, v) for f, w, v in _fields(value) if f not in edit]
                value = b"".join(_field(f, w, v) for f, w, v in kept) + b"".join(
                    _field(f, 0, v) for f, v in edit.items())
        out += _field(number, wire, value)
    return out


def _is_byte_piece(sub):
    return sub.get(3) == BYTE


VARIANTS = {
    "no dummy prefix": dict(normalizer={3: 0}),
    "remove extra whitespaces": dict(normalizer={4: 1}),
    "no dummy prefix, remove extra whitespaces": dict(normalizer={3: 0, 4: 1}),
    "spaces not escaped": dict(normalizer={5: 0}),
    "no byte fallback (unknown -> <unk>)": dict(trainer={35: 0}, piece_filter=lambda sub: not _is_byte_piece(sub)),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_edited_models_match_sentencepiece(model_path, spm_module, variant):
    with open(model_path, "rb") as f:
        buf = _edit_model(f.read(), **VARIANTS[variant])
    sp = spm_module.SentencePieceProcessor(model_proto=buf)
    tok = Tokenizer.from_model_bytes(buf, variant)
    assert_same_as_spm(tok, sp, CORPUS[:1200], label=f"{variant}: ")
    rng = random.Random(3)
    for _ in range(300):
        ids = [rng.choice([0, 1, 2, rng.randrange(tok.vocab_size)]) for _ in range(rng.randint(0, 10))]
        assert tok.decode(ids) == sp.decode(ids), ids


def test_unused_pieces_are_split_back(model_path, spm_module):
    # UNUSED pieces take part in merges but are then split into the pieces that formed them; chunking is off.
    rng = random.Random(11)
    with open(model_path, "rb") as f:
        buf = _edit_model(f.read(), piece_type=lambda sub: UNUSED if sub.get(3, NORMAL) == NORMAL
                          and len(sub[1].decode()) > 1 and rng.random() < 0.2 else None)
    sp = spm_module.SentencePieceProcessor(model_proto=buf)
    tok = Tokenizer.from_model_bytes(buf, "unused")
    assert not tok.chunked
    assert_same_as_spm(tok, sp, CORPUS[:1000], label="unused: ")


def _tiny_model(pieces, *, byte_fallback=False):
    """A hand-made BPE model: <unk> <s> </s>, then (piece, score) or (piece, score, type) entries."""
    body = b""
    for piece, score, kind in [("<unk>", 0.0, 2), ("<s>", 0.0, CONTROL), ("</s>", 0.0, CONTROL)] + [
            (p + (NORMAL,))[:3] for p in pieces]:
        body += _field(1, 2, _field(1, 2, piece.encode()) + _field(2, 5, struct.pack("<f", score)) + _field(3, 0, kind))
    body += _field(2, 2, _field(3, 0, 2) + _field(35, 0, int(byte_fallback)))  # model_type BPE
    body += _field(3, 2, _field(1, 2, b"identity") + _field(3, 0, 1) + _field(4, 0, 0))
    return body


def test_tiny_model_tie_break_and_unknowns(spm_module):
    # Equal scores: the leftmost pair merges first ("▁aaa": ▁a and aa tie at 1.0, ▁a wins, then ▁aa).
    # Characters outside the vocabulary without byte fallback: each run of them is one <unk>.
    buf = _tiny_model([("▁", 0.0), ("a", 0.0), ("b", 0.0), ("aa", 1.0), ("▁a", 1.0), ("▁aa", 0.5),
                       ("ab", 2.0), ("▁b", -1.0)])
    sp = spm_module.SentencePieceProcessor(model_proto=buf)
    tok = Tokenizer.from_model_bytes(buf, "tiny")
    texts = ["aaa", "aaaa", "ab", "aab", "a b", "xyz", "axxa", "a  b", "", " ", "bbb aaab"]
    assert_same_as_spm(tok, sp, texts)
    assert [tok.id_to_piece(i) for i in tok.encode("xyz", bos=False)] == ["▁", "<unk>"]  # unknowns fused


def test_tiny_model_user_defined_pieces_are_frozen(spm_module):
    # "b" is user-defined: always its own token, so "ab" (the best merge) can never form around it; "xy" is
    # user-defined too and beats the single characters x and y.
    buf = _tiny_model([("▁", 0.0), ("a", 0.0), ("b", 0.0, USER_DEFINED), ("ab", 5.0), ("▁a", 1.0), ("x", 0.0),
                       ("y", 0.0), ("xy", -9.0, USER_DEFINED), ("▁x", 3.0)])
    sp = spm_module.SentencePieceProcessor(model_proto=buf)
    tok = Tokenizer.from_model_bytes(buf, "tiny")
    assert_same_as_spm(tok, sp, ["ab", "abab", "b", "xy", "xxy", "a xy b", "bb", "xyxy", " b a"])
    assert [tok.id_to_piece(i) for i in tok.encode("ab", bos=False)] == ["▁a", "b"]


# -----------------------------------------------------------------------------------------------------------
# The wire-format reader
# -----------------------------------------------------------------------------------------------------------
def test_varint_and_fields():
    assert _read_varint(b"\xac\x02", 0) == (300, 2)
    assert _read_varint(_varint(2**64 - 1), 0) == (2**64 - 1, 10)
    assert _fields(_field(1, 2, b"hi") + _field(2, 5, struct.pack("<f", -2.0)) + _field(3, 0, 6)) == [
        (1, 2, b"hi"), (2, 5, struct.pack("<f", -2.0)), (3, 0, 6)]


# -----------------------------------------------------------------------------------------------------------
# Errors: one clear sentence, never an IndexError/KeyError
# -----------------------------------------------------------------------------------------------------------
def test_ids_out_of_range(tok):
    for bad in (-1, 32000, 10**12):
        with pytest.raises(TokenizerError, match=rf"token id {bad} .*expected 0\.\.31999"):
            tok.decode([5, bad])
        with pytest.raises(TokenizerError, match=str(bad)):
            tok.id_to_piece(bad)
        with pytest.raises(TokenizerError, match=str(bad)):
            tok.stream_decoder().push(bad)
    with pytest.raises(TypeError, match="integers"):
        tok.decode([1.5])
    assert isinstance(TokenizerError("x"), ValueError)


def test_bad_text(tok):
    with pytest.raises(TokenizerError, match="surrogate"):
        tok.encode("a\ud800b")
    with pytest.raises(TypeError, match="str"):
        tok.encode(b"bytes")


@pytest.mark.parametrize("content, message", [
    (b"", "no SentencePiece pieces"),
    (b"\x00\x01\x02\x03garbage", "expected a SentencePiece model"),
    (b"hello, this is a README\n", "expected a SentencePiece model"),
    (bytes(range(256)) * 4, "expected a SentencePiece model"),
    (b"{not json", "tokenizer.json"),
])
def test_not_a_tokenizer_file(tmp_path, content, message):
    path = tmp_path / "tokenizer.model"
    path.write_bytes(content)
    with pytest.raises(TokenizerError, match=message) as info:
        load_tokenizer(path)
    assert str(path) in str(info.value)


def test_unsupported_models_are_named(model_path, tmp_path):
    with open(model_path, "rb") as f:
        buf = f.read()
    cases = [
        (_edit_model(buf, trainer={3: 1}), "UNIGRAM model; minimoe implements BPE"),
        (_edit_model(buf, trainer={24: 1}), "treat_whitespace_as_suffix"),
        (_edit_model(buf, trainer={35: 0}), "byte piece '<0x00>' found but byte_fallback is off"),
    ]
    for content, message in cases:
        path = tmp_path / "tokenizer.model"
        path.write_bytes(content)
        with pytest.raises(TokenizerError, match=message):
            load_tokenizer(path)


def test_malformed_byte_piece_and_huge_file(model_path, tmp_path):
    with open(model_path, "rb") as f:
        buf = _edit_model(f.read(), piece_filter=lambda sub: sub[1] != b"<0x0A>")
    buf += _field(1, 2, _field(1, 2, b"<0x0a>") + _field(3, 0, BYTE))  # lower-case hex: not a byte piece
    with pytest.raises(TokenizerError, match="expected the form <0xNN>"):
        Tokenizer.from_model_bytes(buf, "lowercase")
    big = tmp_path / "model.safetensors"
    with open(big, "wb") as f:
        f.truncate(65 * 2**20)  # sparse: no disk used
    with pytest.raises(TokenizerError, match="far too large for a tokenizer"):
        load_tokenizer(big)


def test_load_paths(model_path, tmp_path):
    with pytest.raises(TokenizerError, match="no tokenizer.model or tokenizer.json"):
        load_tokenizer(tmp_path)
    with pytest.raises(TokenizerError, match="no such file"):
        load_tokenizer(tmp_path / "missing.model")
    (tmp_path / "tokenizer.model").write_bytes(open(model_path, "rb").read())
    assert load_tokenizer(tmp_path).encode("Hello world") == [1, 22557, 1526]


# -----------------------------------------------------------------------------------------------------------
# tokenizer.json: parity with Hugging Face `tokenizers` running the same file
# -----------------------------------------------------------------------------------------------------------
# A tokenizer.json is run with the rules of `tokenizers` (merge ranks, Metaspace, added tokens cut from the text,
# the file's decoder chain), so the reference here is `tokenizers.Tokenizer.from_file`, not sentencepiece: a file
# converted from the same tokenizer.model does not tokenize like sentencepiece (docs/tokenizer.md).
LLAMA_DECODER = {"type": "Sequence", "decoders": [
    {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "}, {"type": "ByteFallback"}, {"type": "Fuse"},
    {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}
LEGACY_NORMALIZER = {"type": "Sequence", "normalizers": [
    {"type": "Prepend", "prepend": "\u2581"}, {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]}
BOS_TEMPLATE = {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                                                         {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [], "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}}


def _convert_with_transformers(model_path, sp, *, legacy, by_score=False):
    """tokenizer.json (as a dict) written by transformers' converter for a SentencePiece BPE model.

    transformers 5 converts with SentencePieceExtractor (vocab = pieces in id order, merges = generate_merges)
    and builds LlamaTokenizer(vocab, merges, legacy). The extractor needs the `protobuf` package only to read
    the .model file; without it we read the pieces with sentencepiece and call the same two functions, which
    writes the same file byte for byte (checked with protobuf installed). by_score=True passes the piece scores
    to generate_merges, which orders merges by score as the older converter did (Mistral's Hub file).
    """
    transformers = pytest.importorskip("transformers", reason="transformers writes the tokenizer.json")
    from transformers.tokenization_utils_base import generate_merges

    vocab = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
    scores = {sp.id_to_piece(i): sp.get_score(i) for i in range(sp.get_piece_size())} if by_score else None
    tk = transformers.LlamaTokenizerFast(vocab=vocab, merges=generate_merges(vocab, scores), legacy=legacy)
    return json.loads(tk.backend_tokenizer.to_str())


@pytest.fixture(scope="module")
def hf_files(model_path, sp, tmp_path_factory):
    """name -> path of a tokenizer.json made from Mistral's tokenizer.model, in the shapes found in the wild."""
    pytest.importorskip("tokenizers", reason="Hugging Face tokenizers is the reference for tokenizer.json")
    folder = tmp_path_factory.mktemp("hf")
    ranked = _convert_with_transformers(model_path, sp, legacy=False)
    files = {
        # transformers 5: merges in piece-id order, Metaspace prepend "first" / "always", no <s> template
        "transformers5": ranked,
        "transformers5-legacy": _convert_with_transformers(model_path, sp, legacy=True),
        # the older converter, as on the Hub for Mistral-7B: merges by score, Prepend + Replace normaliser,
        # no pre-tokenizer, and a post-processor that puts <s> in front
        "hub-style": {**_convert_with_transformers(model_path, sp, legacy=True, by_score=True),
                      "normalizer": LEGACY_NORMALIZER, "pre_tokenizer": None, "post_processor": BOS_TEMPLATE},
    }
    paths = {}
    for name, data in files.items():
        paths[name] = folder / name / "tokenizer.json"
        paths[name].parent.mkdir()
        paths[name].write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return paths


@pytest.fixture(scope="module")
def hf_pair(hf_files):
    """name -> (minimoe's HFTokenizer, tokenizers.Tokenizer), both loaded from the same file."""
    import tokenizers

    return {name: (load_tokenizer(path), tokenizers.Tokenizer.from_file(str(path))) for name, path in hf_files.items()}


def assert_same_as_hf(tok, hf, texts, *, label=""):
    """ids (bos=False and bos=True) and decoded text identical to tokenizers on every text."""
    failures = []
    template_adds_bos = hf.encode("x").ids[:1] == [tok.bos_id]
    for text in texts:
        want = hf.encode(text, add_special_tokens=False).ids
        got = tok.encode(text, bos=False)
        if got != want:
            failures.append(f"ids for {text!r}: tokenizers {want[:16]}, minimoe {got[:16]}")
            continue
        # bos=True puts the post-processor's <s> in front, or <s> by name if the template adds nothing
        if tok.encode(text) != (hf.encode(text).ids if template_adds_bos else [tok.bos_id] + want):
            failures.append(f"bos ids for {text!r}")
        if tok.decode(got) != hf.decode(want, skip_special_tokens=True):
            failures.append(f"decode of {text!r}: tokenizers {hf.decode(want, skip_special_tokens=True)!r},"
                            f" minimoe {tok.decode(got)!r}")
    assert not failures, f"{label}{len(failures)} of {len(texts)} differ:\n" + "\n".join(failures[:10])


HF_NAMES = ["transformers5", "transformers5-legacy", "hub-style"]


@pytest.mark.parametrize("name", HF_NAMES)
def test_tokenizer_json_matches_tokenizers_on_corpus(hf_pair, name):
    tok, hf = hf_pair[name]
    assert isinstance(tok, HFTokenizer) and tok.vocab_size == hf.get_vocab_size() == 32000
    assert (tok.bos_id, tok.eos_id, tok.unk_id) == (1, 2, None)  # these files have unk_token null
    assert_same_as_hf(tok, hf, CORPUS, label=f"{name}: ")


@pytest.mark.parametrize("name", ["transformers5", "hub-style"])
@settings(max_examples=MANY)
@given(text=st.one_of(st.text(), st.lists(TRICKY, max_size=20).map("".join)))
def test_hypothesis_tokenizer_json_matches_tokenizers(hf_pair, name, text):
    tok, hf = hf_pair[name]
    assert_same_as_hf(tok, hf, [text], label=f"{name}: ")


@pytest.mark.parametrize("name", ["transformers5", "hub-style"])
@settings(max_examples=MANY)
@given(ids=st.lists(ANY_ID, max_size=24))
def test_hypothesis_tokenizer_json_decode_and_stream(hf_pair, name, ids):
    tok, hf = hf_pair[name]
    assert tok.decode(ids) == hf.decode(ids, skip_special_tokens=True)
    stream = tok.stream_decoder()
    assert "".join([stream.push(i) for i in ids]) + stream.flush() == tok.decode(ids)


def test_tokenizer_json_with_added_tokens_matches_tokenizers(spm_module):
    # Mistral's v7 tokenizer: CONTROL pieces ([INST], [TOOL_CALLS]...) and USER_DEFINED ones, which
    # transformers' extractor writes as added tokens, special and not special. Typed in the text they become
    # their ids; decode skips the special ones and prints the others.
    tokenizers = pytest.importorskip("tokenizers", reason="Hugging Face tokenizers is the reference")
    path = _mistral_data("mistral_instruct_tokenizer_241114.model.v7")
    sp = spm_module.SentencePieceProcessor(model_file=path)
    data = _convert_with_transformers(path, sp, legacy=False)
    types = load_tokenizer(path)
    added = [(i, types.piece_type(i)) for i in range(3, types.vocab_size)
             if types.piece_type(i) in ("CONTROL", "USER_DEFINED")]
    assert len(added) > 100 and {kind for _, kind in added} == {"CONTROL", "USER_DEFINED"}
    data["added_tokens"] += [{"id": i, "content": sp.id_to_piece(i), "single_word": False, "lstrip": False,
                              "rstrip": False, "normalized": False, "special": kind == "CONTROL"}
                             for i, kind in added]
    hf = tokenizers.Tokenizer.from_str(json.dumps(data))
    tok = HFTokenizer.from_json(data, "v7")
    names = [sp.id_to_piece(i) for i, _ in added]
    rng = random.Random(7)
    texts = CORPUS[:600] + [" ".join(rng.choice(names + ["x", "[", "]", "", "REF"]) for _ in range(rng.randint(1, 6)))
                            for _ in range(200)]
    assert_same_as_hf(tok, hf, texts, label="v7: ")


def test_tokenizer_json_is_not_sentencepiece(hf_pair, tok):
    # Why the reference is tokenizers: the transformers 5 file merges "▁▁" first (its merges are in piece-id
    # order, and "▁▁" is piece 259) and types "<s>" in a prompt as the control id; decode skips <unk>.
    json_tok, _ = hf_pair["transformers5"]
    pieces = [json_tok.id_to_piece(i) for i in json_tok.encode("hello  world", bos=False)]
    assert pieces == ["▁hell", "o", "▁▁", "world"]
    assert [tok.id_to_piece(i) for i in tok.encode("hello  world", bos=False)] == ["▁hell", "o", "▁", "▁world"]
    assert json_tok.encode("a<s>", bos=False) == [tok.piece_to_id("▁a"), 1]
    assert json_tok.decode([0, 22557]) == "Hello" and tok.decode([0, 22557]) == " ⁇  Hello"


def test_tokenizer_json_chunking_and_streaming(hf_pair):
    tok, _ = hf_pair["transformers5"]
    assert tok.chunked
    whole = HFTokenizer.from_json(json.loads(open(tok.source, encoding="utf-8").read()), "whole")
    whole.chunked = False
    for text in CORPUS[:400]:
        assert tok.encode(text) == whole.encode(text), text
    # ByteFallback decodes a run of byte tokens as a whole (one U+FFFD per byte if any part is invalid), so
    # the stream holds the run until a token that is not a byte ends it.
    ids = tok.encode("🤖本", bos=False)
    assert [tok.id_to_piece(i) for i in ids] == ["▁", "<0xF0>", "<0x9F>", "<0xA4>", "<0x96>", "本"]
    stream = tok.stream_decoder()
    assert [stream.push(i) for i in ids] == ["", "", "", "", "", "🤖本"]  # the leading space is Strip'ped
    assert stream.flush() == ""
    assert stream.push(3 + 0xF0) == "" and stream.push(3 + 0x9F) == "" and stream.flush() == "\ufffd\ufffd"
    assert tok.decode([3 + 0xE6, 3 + 0x97, 3 + 0xA5, 3 + 0xFF]) == "\ufffd" * 4  # sentencepiece: "日\ufffd"


# A hand-written tokenizer.json: every expected id below is derived by hand from the merge ranks.
TINY_VOCAB = {"<unk>": 0, "<s>": 1, "</s>": 2, "\u2581": 3, "a": 4, "b": 5, "c": 6, "ab": 7, "bc": 8,
              "\u2581a": 9, "abc": 10, "\u2581ab": 11, "<0xC3>": 12, "<0xA9>": 13, "\u2581\u2581": 14}
TINY_MERGES = [["b", "c"],            # rank 0
               ["a", "b"],            # rank 1
               ["\u2581", "a"],       # rank 2
               ["\u2581a", "b"],      # rank 3
               ["a", "bc"],           # rank 4
               ["ab", "c"],           # rank 5: "abc" again, from another pair
               ["\u2581", "\u2581"]]  # rank 6


def _tiny_json(**changes):
    data = {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": i, "content": c, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": True} for i, c in enumerate(["<unk>", "<s>", "</s>"])],
        "normalizer": None,
        "pre_tokenizer": {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "first", "split": False},
        "post_processor": BOS_TEMPLATE,
        "decoder": LLAMA_DECODER,
        "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>", "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
                  "vocab": TINY_VOCAB, "merges": TINY_MERGES},
    }
    data.update(changes)
    return data


TINY_CASES = [
    # "abc" -> "▁abc" -> ▁ a b c. Pairs: ▁a r2, ab r1, bc r0. bc (r0) first -> ▁ a bc, new pair a+bc r4;
    # ab is stale; ▁a (r2) beats a+bc (r4) -> ▁a bc; "▁a"+"bc" is no merge. By score (sentencepiece, any
    # split of a piece counts) "▁abc" is not a piece either, but the order would not be set by pairs.
    ("abc", [9, 8]),
    # " a": Metaspace turns the space into "▁" and then adds no second one (the text starts with "▁"): ▁a
    (" a", [9]),
    # "babc" -> ▁ b a b c: bc r0 -> ▁ b a bc; ab stale; a+bc r4 -> ▁ b abc; nothing else merges
    ("babc", [3, 5, 10]),
    # "a  b" -> "▁a▁▁b": ▁a r2 (leftmost of the r2s? only one), ▁▁ r6 -> ▁a ▁▁ b
    ("a  b", [9, 14, 5]),
    # "é" is not in the vocabulary: its bytes C3 A9 are, so ▁ <0xC3> <0xA9> (bytes replace it *before* merging)
    ("é", [3, 12, 13]),
    # "z" and its byte <0x7A> are unknown: <unk>, and "zz" fuses into one <unk> (fuse_unk)
    ("zz", [3, 0]),
    # "<s>" typed in the text is the added token; the segment after it is not at offset 0, so with prepend
    # "first" it gets no "▁": a | <s> | b -> ▁a, <s>, b
    ("a<s>b", [9, 1, 5]),
    ("", []),
]


@pytest.mark.parametrize("text, want", TINY_CASES)
def test_tiny_tokenizer_json_by_hand(tmp_path, text, want):
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(_tiny_json()), encoding="utf-8")
    tok = load_tokenizer(tmp_path)
    assert isinstance(tok, HFTokenizer)
    assert tok.encode(text, bos=False) == want
    assert tok.encode(text) == [1] + want
    try:
        import tokenizers
    except ImportError:
        return
    hf = tokenizers.Tokenizer.from_file(str(path))
    assert hf.encode(text).ids == [1] + want  # the hand derivation agrees with the reference
    assert tok.decode([1] + want) == hf.decode([1] + want, skip_special_tokens=True)


def test_tiny_tokenizer_json_decode_by_hand():
    tok = HFTokenizer.from_json(_tiny_json(), "tiny")
    # <s> skipped; Replace: " a" "bc" " " "<0xC3>" "<0xA9>"; ByteFallback: C3 A9 is "é"; Fuse: " abc é";
    # Strip removes the one leading space of the whole text.
    assert tok.decode([1, 9, 8, 3, 12, 13]) == "abc é"
    # a run that is not valid UTF-8 is one U+FFFD per byte; the text then starts with U+FFFD, nothing stripped
    assert tok.decode([12, 9]) == "\ufffd a"
    assert tok.decode([0, 2]) == ""  # special added tokens print nothing
    assert (tok.piece_type(1), tok.piece_type(12), tok.piece_type(9)) == ("CONTROL", "BYTE", "NORMAL")


def test_tokenizer_json_old_merge_format_and_split_metaspace():
    # Older files write merges as "a b" strings and Metaspace without prepend_scheme (add_prefix_space) and
    # with split=True by default: each "▁" starts a new word, so "a  b" -> ▁a | ▁ | ▁b, and ▁▁ cannot form.
    data = _tiny_json(pre_tokenizer={"type": "Metaspace", "replacement": "\u2581", "add_prefix_space": True})
    data["model"] = {**data["model"], "merges": [" ".join(m) for m in TINY_MERGES]}
    tok = HFTokenizer.from_json(data, "old")
    assert tok.encode("a  b", bos=False) == [9, 3, 3, 5]
    assert tok.encode("<s>b", bos=False) == [1, 3, 5]  # "always": every segment gets its "▁"


def _tiny_variant(model=None, **changes):
    data = _tiny_json(**changes)
    data["model"] = {**data["model"], **(model or {})}
    return data


_REPLACE_SPACE = {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "}
TINY_VARIANTS = {
    "as written": _tiny_variant(),
    "ignore_merges": _tiny_variant(model={"ignore_merges": True}),
    "unk not fused": _tiny_variant(model={"fuse_unk": False}),
    "no unk token (unknowns dropped)": _tiny_variant(model={"unk_token": None}),
    "no byte fallback": _tiny_variant(model={"byte_fallback": False}),
    "Metaspace always, split": _tiny_variant(pre_tokenizer={"type": "Metaspace", "replacement": "\u2581",
                                                            "prepend_scheme": "always", "split": True}),
    "Metaspace never": _tiny_variant(pre_tokenizer={"type": "Metaspace", "replacement": "\u2581",
                                                    "prepend_scheme": "never", "split": False}),
    "Prepend + Replace, no template": _tiny_variant(normalizer=LEGACY_NORMALIZER, pre_tokenizer=None,
                                                    post_processor=None),
    "no decoder (tokens joined by spaces)": _tiny_variant(decoder=None),
    "Metaspace decoder after ByteFallback": _tiny_variant(decoder={"type": "Sequence", "decoders": [
        {"type": "ByteFallback"}, {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "always"}]}),
    "Strip per token, no Fuse": _tiny_variant(decoder={"type": "Sequence", "decoders": [
        _REPLACE_SPACE, {"type": "ByteFallback"}, {"type": "Strip", "content": " ", "start": 2, "stop": 0}]}),
}


@pytest.mark.parametrize("variant", sorted(TINY_VARIANTS))
def test_tiny_tokenizer_json_variants_match_tokenizers(variant):
    tokenizers = pytest.importorskip("tokenizers", reason="Hugging Face tokenizers is the reference")
    data = TINY_VARIANTS[variant]
    hf = tokenizers.Tokenizer.from_str(json.dumps(data))
    tok = HFTokenizer.from_json(data, variant)
    rng = random.Random(5)
    alphabet = ["a", "b", "c", "abc", " ", "  ", "\u2581", "é", "z", "<s>", "</s>", "\n"]
    texts = ["", " ", "abc", " abc", "zz", "a<s>b"] + [
        "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 8))) for _ in range(300)]
    assert_same_as_hf(tok, hf, texts, label=f"{variant}: ")
    for _ in range(300):
        ids = [rng.randrange(len(TINY_VOCAB)) for _ in range(rng.randint(0, 8))]
        stream = tok.stream_decoder()
        assert tok.decode(ids) == hf.decode(ids, skip_special_tokens=True), ids
        assert "".join([stream.push(i) for i in ids]) + stream.flush() == tok.decode(ids), ids


def _hf_refusal(tmp_path, data, message):
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(TokenizerError, match=message) as info:
        load_tokenizer(tmp_path)
    assert str(path) in str(info.value)


BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}


@pytest.mark.parametrize("change, message", [
    (dict(model={"type": "WordPiece", "vocab": {"a": 0}, "unk_token": "[UNK]"}),
     r"a WordPiece tokenizer\.json; minimoe supports SentencePiece-style BPE"),
    (dict(model={"type": "Unigram", "vocab": [["a", -1.0]], "unk_id": 0}), r"a Unigram tokenizer\.json"),
    (dict(pre_tokenizer=BYTE_LEVEL, decoder=BYTE_LEVEL), r"byte-level BPE .*GPT-2, Llama-3 and tekken"),
    (dict(pre_tokenizer={"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": "\\s+"}, "behavior": "Isolated", "invert": False}, BYTE_LEVEL]}),
     "byte-level BPE"),
    (dict(normalizer={"type": "NFKC"}), r"normalizer .*NFKC.* not supported"),
    (dict(pre_tokenizer={"type": "Whitespace"}), "pre-tokenizer Whitespace is not supported"),
    (dict(decoder={"type": "WordPiece", "prefix": "##", "cleanup": True}), "decoder .*WordPiece.* not supported"),
    (dict(added_tokens=[{"id": 1, "content": "<s>", "lstrip": True, "special": True}]), "sets lstrip"),
    (dict(truncation={"max_length": 8}), "'truncation' is set"),
])
def test_unsupported_tokenizer_json_is_named(tmp_path, change, message):
    _hf_refusal(tmp_path, _tiny_json(**change), message)


def test_malformed_tokenizer_json(tmp_path):
    tiny = _tiny_json()
    _hf_refusal(tmp_path, {**tiny, "model": {**tiny["model"], "merges": [["a", "z"]]}}, "'z', not in model.vocab")
    _hf_refusal(tmp_path, {**tiny, "model": {**tiny["model"], "unk_token": "<oov>"}}, "unk_token '<oov>'")
    (tmp_path / "tokenizer.json").write_text("[1, 2]")
    with pytest.raises(TokenizerError, match="not a Hugging Face tokenizer.json"):
        load_tokenizer(tmp_path)
    tok = HFTokenizer.from_json(tiny, "tiny")
    with pytest.raises(TokenizerError, match=r"token id 15 is outside"):
        tok.decode([15])  # tokenizers would drop it silently; minimoe names it, as for tokenizer.model


def test_tokenizer_model_is_preferred_over_json(model_path, tmp_path):
    (tmp_path / "tokenizer.json").write_text(json.dumps(_tiny_json()), encoding="utf-8")
    assert isinstance(load_tokenizer(tmp_path), HFTokenizer)  # only a tokenizer.json: it is used
    (tmp_path / "tokenizer.model").write_bytes(open(model_path, "rb").read())
    tok = load_tokenizer(tmp_path)  # both: the tokenizer.model, the reference format
    assert type(tok) is Tokenizer and tok.vocab_size == 32000
    assert isinstance(load_tokenizer(tmp_path / "tokenizer.json"), HFTokenizer)  # unless the file is named
