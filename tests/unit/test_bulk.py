"""flightrec.bulk: the C interning and row printing against their Python reference."""

import random

import numpy as np
import pytest

from flightrec import bulk
from flightrec.bulk import CLOSE, FIELD, HEX, INT, MICROS, OPEN, PIECE, SPAN, VARINT, WORDS, Seg, micros, varint

needs_c = pytest.mark.skipif(not bulk.available(), reason="flightrec/_bulk.so is not built: run `make`")


def collect(segs, suffix, sep, rows, fn) -> bytes:
    chunks = []
    fn(segs, suffix, sep, rows, lambda c: chunks.append(bytes(c)))
    return sep.join(chunks)


def random_segs(rng: random.Random, rows: int) -> list[Seg]:
    segs = []
    for _ in range(rng.randint(1, 6)):
        how = rng.choice([INT, MICROS, PIECE, HEX, VARINT])
        literal = bytes(rng.choice(b'{}",:ab\n\xc3\xa9') for _ in range(rng.randint(0, 12)))
        if how == PIECE:
            pieces = [bytes(rng.randrange(256) for _ in range(rng.randint(0, 40))) for _ in range(rng.randint(1, 30))]
            values = np.array([rng.randrange(len(pieces)) for _ in range(rows)], dtype=np.int64)
            if rng.random() < 0.5:
                segs.append(Seg(literal, how, values, pieces))
            else:  # the same pieces given joined
                offsets = np.cumsum([0] + [len(p) for p in pieces])
                segs.append(Seg(literal, how, values, joined=b"".join(pieces), offsets=offsets))
        else:
            edge = [0, 1, -1, 127, 128, 999, 1000, 1001, -999, -1000, -1001, 2**63 - 1, -(2**63), 10**12 + 7]
            values = np.array(
                [rng.choice(edge) if rng.random() < 0.3 else rng.randint(-(10**15), 10**15) for _ in range(rows)],
                dtype=np.int64,
            )
            segs.append(Seg(literal, how, values))
    # length-delimited bodies around some runs of segments, nested, some long enough for a 2-byte length
    for _ in range(rng.randint(0, 3)):
        a = rng.randint(0, len(segs))
        b = rng.randint(a, len(segs))
        segs[a:b] = [Seg(b"\x0a", OPEN), *segs[a:b], Seg(b"z" * rng.choice([0, 3, 200]), CLOSE)]
    return segs


def test_micros_is_exact():
    assert [micros(v) for v in (0, 1, 999, 1000, 1001, 123456789, -1, -1000, -1500)] == [
        "0",
        "0.001",
        "0.999",
        "1",
        "1.001",
        "123456.789",
        "-0.001",
        "-1",
        "-1.500",
    ]


def test_python_render_shape():
    segs = [
        Seg(b"<", INT, np.array([5, -7])),
        Seg(b"|", MICROS, np.array([1500, 2000])),
        Seg(b"|", PIECE, np.array([1, 0]), [b"a", b"bc"]),
        Seg(b"|", HEX, np.array([0, -1])),
    ]
    assert collect(segs, b">", b";", 2, bulk._render_py) == b"<5|1.500|bc|0x0>;<-7|2|a|0xffffffffffffffff>"


@needs_c
def test_varint_is_protobufs():
    # protobuf's encoding: 7 bits a byte, low first, high bit set on all but the last; negatives as 2**64 + v
    assert [varint(v) for v in (0, 1, 127, 128, 300, 2**63, -1)] == [
        b"\x00",
        b"\x01",
        b"\x7f",
        b"\x80\x01",
        b"\xac\x02",
        b"\x80" * 9 + b"\x01",
        b"\xff" * 9 + b"\x01",
    ]


def test_python_render_length_delimited():
    # a body's length goes in front of it; an inner body's length counts in the outer's
    segs = [
        Seg(b"\x0a", OPEN),
        Seg(b"\x08", VARINT, np.array([150, 1])),
        Seg(b"\x12", OPEN),
        Seg(b"", PIECE, np.array([0, 1]), [b"ab", b"x" * 200]),
        Seg(b"", CLOSE),
        Seg(b"", CLOSE),
    ]
    inner = b"\x12\x02ab"
    row0 = b"\x0a" + varint(3 + len(inner)) + b"\x08\x96\x01" + inner
    inner1 = b"\x12\xc8\x01" + b"x" * 200
    row1 = b"\x0a" + varint(2 + len(inner1)) + b"\x08\x01" + inner1
    assert collect(segs, b"", b"", 2, bulk._render_py) == row0 + row1
    assert collect(segs, b"", b"", 2, bulk.render) == row0 + row1


def spans(rng: random.Random, rows: int, alphabet: bytes) -> tuple[bytes, np.ndarray, np.ndarray]:
    base = bytes(rng.choice(alphabet) for _ in range(3000))
    off = np.array([rng.randrange(2900) for _ in range(rows)], dtype=np.int64)
    length = np.array([rng.randint(0, 99) for _ in range(rows)], dtype=np.int64)
    return base, off, length


# interned word names and values as the export gives them: some words of the alphabet below
# have an iid, one of them as a name and as a value (different iids), one a 2-byte iid
INTERNED = ({"a": 3, "ab": 300, "b": 1}, {"b": 2, "(a)": 7, "0xa": 9})


@pytest.mark.parametrize("interned", [({}, {}), INTERNED], ids=["plain", "interned"])
@pytest.mark.parametrize("seed", range(10))
def test_span_and_words_print_the_buffers_bytes(seed, interned):
    rng = random.Random(seed)
    rows = 300
    names, values = interned
    base, off, length = spans(rng, rows, b'  (()==ab0x"\\\x7e')  # printable: WORDS' domain
    segs = [
        Seg(b"<", SPAN, off, base=base, lengths=length),
        Seg(b"\x0a", OPEN),
        Seg(b"", WORDS, off, base=base, lengths=length, word_names=names, word_values=values),
        Seg(b">", CLOSE),
    ]
    want = b"".join(
        b"<"
        + base[o : o + n]
        + b"\x0a"
        + varint(len(bulk.proto_members(base[o : o + n].decode(), names, values)) + 1)
        + bulk.proto_members(base[o : o + n].decode(), names, values)
        + b">"
        for o, n in zip(off.tolist(), length.tolist())
    )
    assert collect(segs, b"", b"", rows, bulk._render_py) == want
    assert collect(segs, b"", b"", rows, bulk.render) == want


def test_span_outside_its_buffer_is_refused():
    with pytest.raises(ValueError, match="outside"):
        bulk.render([Seg(b"", SPAN, np.array([2]), base=b"abc", lengths=np.array([2]))], b"", b"", 1, lambda c: None)


@pytest.mark.parametrize("seed", range(5))
def test_plain_matches_python(seed, monkeypatch):
    rng = random.Random(seed)
    base, off, length = spans(rng, 500, b"ab =(\x7e\x7f\t\x1f\x80\xc3")
    c = bulk.plain(base, off, length)
    monkeypatch.setattr(bulk, "available", lambda: False)
    assert c.tolist() == bulk.plain(base, off, length).tolist()
    assert 0 < c.sum() < len(c)


def test_render_refuses_unbalanced_bodies():
    for segs in ([Seg(b"", OPEN)], [Seg(b"", CLOSE)], [Seg(b"", OPEN)] * 17 + [Seg(b"", CLOSE)] * 17):
        with pytest.raises(ValueError, match="balance"):
            bulk.render(segs, b"", b"", 1, lambda c: None)


@pytest.mark.parametrize("seed", range(40))
def test_c_render_matches_python(seed):
    rng = random.Random(seed)
    rows = rng.choice([1, 2, 17, 500, 3000])
    segs = random_segs(rng, rows)
    suffix, sep = rng.choice([b"", b"}"]), rng.choice([b",\n", b"", b"\x00"])
    assert collect(segs, suffix, sep, rows, bulk.render) == collect(segs, suffix, sep, rows, bulk._render_py)


@needs_c
def test_c_render_spans_chunks(monkeypatch):
    """Rows never split across chunks, even when one row is most of a chunk."""
    monkeypatch.setattr(bulk, "CHUNK_BYTES", 64)
    big = [b"x" * 100, b"y"]
    segs = [Seg(b"[", PIECE, np.array([i % 2 for i in range(1000)]), big), Seg(b"#", INT, np.arange(1000))]
    chunks = []
    bulk.render(segs, b"]", b",", 1000, lambda c: chunks.append(bytes(c)))
    assert len(chunks) > 10
    assert all(c.startswith(b"[") and c.endswith(b"]") for c in chunks)
    assert b",".join(chunks) == collect(segs, b"]", b",", 1000, bulk._render_py)


def test_render_refuses_bad_columns():
    with pytest.raises(ValueError, match="shorter"):
        bulk.render([Seg(b"", INT, np.arange(3))], b"", b"", 4, lambda c: None)
    with pytest.raises(ValueError, match="out of range"):
        bulk.render([Seg(b"", PIECE, np.array([0, 2]), [b"a", b"b"])], b"", b"", 2, lambda c: None)
    with pytest.raises(ValueError, match="out of range"):
        bulk.render([Seg(b"", PIECE, np.array([-1]), [b"a"])], b"", b"", 1, lambda c: None)


def test_render_nothing_writes_nothing():
    out = []
    bulk.render([Seg(b"x", INT, np.zeros(0, np.int64))], b"", b",", 0, out.append)
    assert out == []


@needs_c
@pytest.mark.parametrize("seed", range(10))
def test_c_intern_matches_python(seed):
    rng = random.Random(seed)
    words = [bytes(rng.randrange(256) for _ in range(rng.randint(0, 6))) for _ in range(rng.randint(1, 200))]
    parts = [rng.choice(words) for _ in range(rng.choice([0, 1, 5000]))]
    data = b"".join(parts)
    length = np.array([len(p) for p in parts], dtype=np.int32)
    off = np.concatenate(([0], np.cumsum(length)[:-1])).astype(np.int64) if parts else np.zeros(0, np.int64)
    ids, first = bulk.intern(data, off, length)
    ref_ids, ref_first = bulk._intern_py(data, off, length)
    assert ids.tolist() == ref_ids.tolist() and first.tolist() == ref_first.tolist()
    # what the ids mean: equal ids exactly for equal strings, first holds each id's first index
    assert len(first) == len(set(parts))
    assert [parts[i] for i in first] == list(dict.fromkeys(parts))


def JSON_MEMBERS(text: str) -> bytes:
    return bulk.json_members(text).encode()


def test_json_members_shape():
    text = ' (xsk_flush+0x0/0x40) addr=0x1a00 xs= =x a"b=c\\d plain'
    assert bulk.json_members(text) == ('"site":"(xsk_flush+0x0/0x40)","addr":"0x1a00","xs":"","a\\"b":"c\\\\d"')


def test_python_json_words_leaves_other_text_to_python():
    strings = [b"a=1 b=2", b"\xc3\xa9=1", b"a=1\tb=2", b"", b"(x) =y"]
    data = b"".join(strings)
    off = np.cumsum([0] + [len(s) for s in strings[:-1]])
    blob, lens = bulk._words_py(JSON_MEMBERS, data, off, np.array([len(s) for s in strings]))
    assert lens.tolist() == [15, -1, -1, 0, 12]
    assert blob == b'"a":"1","b":"2""site":"(x)"'


def test_proto_members_are_debug_annotations():
    # field 4 (TrackEvent.debug_annotations), each {10: name, 6: string_value}; a 200-byte value takes a 2-byte length
    assert bulk.proto_members("(f+0x0/0x4) v=x1a00 x") == (
        b"\x22\x13\x52\x04site\x32\x0b(f+0x0/0x4)" + b"\x22\x0a\x52\x01v\x32\x05x1a00"
    )
    long = bulk.proto_members("v=" + "y" * 200)
    assert long == b"\x22\xce\x01" + b"\x52\x01v" + b"\x32\xc8\x01" + b"y" * 200


def test_kernel_hex_values_are_pointers_and_other_spellings_strings():
    # pointer_value (7) for %lx after 0x, which prints back the same; 0x1a00 is the varint 80 34
    assert bulk.proto_members("addr=0x1a00") == b"\x22\x09\x52\x04addr\x38\x80\x34"
    assert bulk.proto_members("a=0x0") == b"\x22\x05\x52\x01a\x38\x00"
    assert bulk.proto_members("a=0xffffffffffffffff") == b"\x22\x0e\x52\x01a\x38" + b"\xff" * 9 + b"\x01"
    for kept in ("0x01a", "0X1a", "0x1A", "0x", "0x10000000000000000", "1a", "0x1g"):
        assert bulk.proto_members(f"a={kept}") == bulk.proto_members("a=x")[:1] + bytes([5 + len(kept)]) + (
            b"\x52\x01a\x32" + bytes([len(kept)]) + kept.encode()
        )


def test_interned_names_and_values_are_iids():
    # name_iid (1), string_value_iid (17: tag 88 01); a value is looked up among values only
    names, values = {"site": 12, "xs": 200}, {"(f+0x0/0x4)": 30}
    assert bulk.proto_members("(f+0x0/0x4) xs=(f+0x0/0x4) site=xs", names, values) == (
        b"\x22\x05\x08\x0c\x88\x01\x1e" + b"\x22\x06\x08\xc8\x01\x88\x01\x1e" + b"\x22\x06\x08\x0c\x32\x02xs"
    )


WORD_WRITERS = [(bulk.json_words, JSON_MEMBERS), (bulk.proto_words, bulk.proto_members)]


@needs_c
@pytest.mark.parametrize("words,members", WORD_WRITERS, ids=["json", "proto"])
@pytest.mark.parametrize("seed", range(20))
def test_c_words_match_python(seed, words, members):
    rng = random.Random(seed)
    alphabet = b'  (()==ab0x"\\\x7e\x7f\t\x1f\x80\xc3\xa9'
    strings = [bytes(rng.choice(alphabet) for _ in range(rng.randint(0, 30))) for _ in range(2000)]
    data = b"".join(strings)
    off = np.cumsum([0] + [len(s) for s in strings[:-1]])
    length = np.array([len(s) for s in strings])
    blob, lens = words(data, off, length)
    want_blob, want_lens = bulk._words_py(members, data, off, length)
    assert lens.tolist() == want_lens.tolist()
    assert blob == want_blob


@needs_c
@pytest.mark.parametrize("words,members", WORD_WRITERS, ids=["json", "proto"])
def test_c_words_span_chunks(monkeypatch, words, members):
    monkeypatch.setattr(bulk, "CHUNK_BYTES", 64)
    strings = [b"(s) a=1 bb=22"] * 50 + [b"x=" + b"y" * 200]
    data = b"".join(strings)
    off = np.cumsum([0] + [len(s) for s in strings[:-1]])
    length = np.array([len(s) for s in strings])
    assert words(data, off, length)[0] == bulk._words_py(members, data, off, length)[0]


def test_plain_finds_one_odd_byte_anywhere():
    """plain reads eight bytes at a time: every byte value, at every place in and after a word."""
    base = b"x" * 40
    for value in range(256):
        for at in range(19):
            text = base[:at] + bytes([value]) + base[at + 1 : 19]
            got = bulk.plain(text, np.array([0]), np.array([19]))
            assert got.tolist() == [0x20 <= value <= 0x7E], (value, at)


@pytest.mark.parametrize("seed", range(5))
def test_field_prints_what_open_varint_close_print(seed):
    rng = random.Random(seed)
    rows = 400
    # every varint length, 1 to 10 bytes, and literals up to the longest allowed
    values = np.array([rng.getrandbits(rng.choice([3, 7, 14, 28, 35, 49, 56, 63, 64])) for _ in range(rows)], np.uint64)
    values = values.view(np.int64)
    literal = bytes(rng.randrange(256) for _ in range(rng.randint(1, bulk.FIELD_LITERAL_MAX)))
    tail = [Seg(b"|", VARINT, values[::-1].copy())]
    fused = [Seg(literal, FIELD, values), *tail]
    apart = [Seg(literal[:1], OPEN), Seg(literal[1:], VARINT, values), Seg(b"", CLOSE), *tail]
    want = collect(apart, b"\n", b"", rows, bulk._render_py)
    assert collect(apart, b"\n", b"", rows, bulk.render) == want
    assert collect(fused, b"\n", b"", rows, bulk._render_py) == want
    assert collect(fused, b"\n", b"", rows, bulk.render) == want


def test_field_refuses_a_literal_without_tag_or_too_long():
    for literal in (b"", b"\x22" * (bulk.FIELD_LITERAL_MAX + 1)):
        with pytest.raises(ValueError, match="field segment"):
            bulk.render([Seg(literal, FIELD, np.array([1]))], b"", b"", 1, lambda c: None)
