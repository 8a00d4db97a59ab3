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
    Tokenizer,
    TokenizerError,
    _decode_byte_run,
    _fields,
    _read_varint,
    load_tokenizer,
)

MISTRAL_SHA256 = "dadfd56d766715c61d2ef780a525ab43b8e6da4de6865bda3d95fdef5e134055"  # ../shared/FACTS.md

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


def test_tokenizer_json_is_refused_with_the_reason(model_path, tmp_path):
    # minimoe reads tokenizer.model only (a tokenizer.json's ids are not sentencepiece's: docs/tokenizer.md).
    hf = {"version": "1.0", "model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}, "added_tokens": []}
    (tmp_path / "tokenizer.json").write_text(json.dumps(hf))
    with pytest.raises(TokenizerError, match=r"tokenizer\.json \(BPE model\); minimoe reads SentencePiece"):
        load_tokenizer(tmp_path)  # a directory with only a tokenizer.json
    with pytest.raises(TokenizerError, match="tokenizer.model"):
        load_tokenizer(tmp_path / "tokenizer.json")
    (tmp_path / "other.json").write_text("[1, 2]")
    with pytest.raises(TokenizerError, match="not a Hugging Face tokenizer.json"):
        load_tokenizer(tmp_path / "other.json")
    (tmp_path / "tokenizer.model").write_bytes(open(model_path, "rb").read())
    assert load_tokenizer(tmp_path).vocab_size == 32000  # with both present, the .model is used
