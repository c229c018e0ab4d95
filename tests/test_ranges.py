"""Range parsing and multipart/byteranges layout (RFC 9110 §14, §15.3.7).

Rows named rfc-* are the examples of RFC 9110 §14.1.2; go-* the cases of Go's net/http
range_test.go / fs_test.go (with the size those tests use). Where we answer differently from
Go, the id says so and the module docstring of wirespeed.proto.ranges gives the rule.
"""

from __future__ import annotations

import doctest
import email.parser
import email.policy
import itertools
from typing import Final

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wirespeed.proto import ranges
from wirespeed.proto.ranges import (
    MAX_RANGES,
    ByteRange,
    RangeNotSatisfiable,
    make_boundary,
    multipart_content_type,
    multipart_plan,
    parse_range,
)

UNSATISFIABLE: Final = "416"
GO_FILE: Final = 11  # len("0123456789\n"), Go's testdata/file
GO_INDEX: Final = 22  # len("index.html says hello\n"), Go's testdata/index.html

Expected = list[tuple[int, int]] | str | None

# Property tests check correctness, not speed: a per-example deadline would make them flaky
# on the shared 2-core CI machine.
NO_DEADLINE = settings(deadline=None)


def _run(header: str, size: int, **kwargs: int) -> Expected:
    try:
        result = parse_range(header, size, **kwargs)
    except RangeNotSatisfiable as exc:
        assert exc.size == size
        assert exc.content_range == f"bytes */{size}"
        return UNSATISFIABLE
    if result is None:
        return None
    return [(r.start, r.end) for r in result]


def test_doctests() -> None:
    results = doctest.testmod(ranges)
    assert results.attempted > 0
    assert results.failed == 0


CASES = [
    # ---- RFC 9110 §14.1.2, a 10000-byte representation.
    pytest.param("bytes=0-499", 10000, [(0, 499)], id="rfc-first-500"),
    pytest.param("bytes=500-999", 10000, [(500, 999)], id="rfc-second-500"),
    pytest.param("bytes=-500", 10000, [(9500, 9999)], id="rfc-last-500-suffix"),
    pytest.param("bytes=9500-", 10000, [(9500, 9999)], id="rfc-last-500-open-ended"),
    pytest.param("bytes=0-0,-1", 10000, [(0, 0), (9999, 9999)], id="rfc-first-and-last-byte"),
    # "Other valid (but not canonical) specifications of the second 500 bytes": coalesced,
    # so they are served exactly like the canonical form, as one range (rule 7, rule 9).
    pytest.param("bytes=500-600,601-999", 10000, [(500, 999)], id="rfc-noncanonical-adjacent"),
    pytest.param("bytes=500-700,601-999", 10000, [(500, 999)], id="rfc-noncanonical-overlap"),
    # ---- Go range_test.go ParseRangeTests.
    pytest.param("", 0, None, id="go-empty-header-empty-file"),
    pytest.param("", 1000, None, id="go-empty-header"),
    pytest.param("foo", 0, None, id="go-foo-empty-file"),
    pytest.param("bytes=", 0, None, id="go-no-ranges-empty-file"),
    pytest.param("bytes=7", 10, None, id="go-no-dash"),
    pytest.param("bytes= 7 ", 10, None, id="go-no-dash-spaces"),
    pytest.param("bytes=1-", 0, None, id="go-open-ended-on-empty-file"),
    pytest.param("bytes=5-4", 10, None, id="go-last-before-first"),
    pytest.param("bytes=0-2,5-4", 10, None, id="go-one-invalid-spoils-all"),
    pytest.param("bytes=2-5,4-3", 10, None, id="go-second-invalid"),
    pytest.param("bytes=--5,4--3", 10, None, id="go-double-dashes"),
    pytest.param("bytes=A-", 10, None, id="go-letter-first"),
    pytest.param("bytes=A- ", 10, None, id="go-letter-first-space"),
    pytest.param("bytes=A-Z", 10, None, id="go-letters"),
    pytest.param("bytes= -Z", 10, None, id="go-letter-suffix"),
    pytest.param("bytes=5-Z", 10, None, id="go-letter-last"),
    pytest.param("bytes=Ran-dom, garbage", 10, None, id="go-garbage"),
    pytest.param("bytes=0x01-0x02", 10, None, id="go-hex"),
    pytest.param("bytes=         ", 10, None, id="go-only-spaces"),
    pytest.param("bytes= , , ,   ", 10, None, id="go-only-empty-elements"),
    pytest.param("bytes=0-9", 10, [(0, 9)], id="go-whole-closed"),
    pytest.param("bytes=0-", 10, [(0, 9)], id="go-whole-open"),
    pytest.param("bytes=5-", 10, [(5, 9)], id="go-open-ended"),
    pytest.param("bytes=0-20", 10, [(0, 9)], id="go-last-clamped"),
    # Go's old table expects no ranges here; RFC 9110 §14.1.1 drops only the unsatisfiable one.
    pytest.param("bytes=15-,0-5", 10, [(0, 5)], id="go-unsatisfiable-one-dropped"),
    pytest.param("bytes=1-2,5-", 10, [(1, 2), (5, 9)], id="go-two-ranges"),
    pytest.param("bytes=-2 , 7-", 11, [(7, 10)], id="go-suffix-inside-open-coalesced"),
    pytest.param("bytes=0-0 ,2-2, 7-", 11, [(0, 0), (2, 2), (7, 10)], id="go-three-ranges"),
    pytest.param("bytes=-5", 10, [(5, 9)], id="go-suffix"),
    pytest.param("bytes=-15", 10, [(0, 9)], id="go-suffix-longer-than-file"),
    pytest.param(
        "bytes=   1 -2   ,  4- 5, 7 - 8 , ,,",
        11,
        [(1, 2), (4, 5), (7, 8)],
        id="go-apache-laxity",
    ),
    # ---- Go fs_test.go ServeFileRangeTests, an 11-byte file.
    pytest.param("bytes=0-4", GO_FILE, [(0, 4)], id="go-serve-0-4"),
    pytest.param("bytes=2-", GO_FILE, [(2, 10)], id="go-serve-2-"),
    pytest.param("bytes=-5", GO_FILE, [(6, 10)], id="go-serve-suffix-5"),
    pytest.param("bytes=3-7", GO_FILE, [(3, 7)], id="go-serve-3-7"),
    pytest.param("bytes=0-0,-2", GO_FILE, [(0, 0), (9, 10)], id="go-serve-first-and-suffix"),
    pytest.param("bytes=0-1,5-8", GO_FILE, [(0, 1), (5, 8)], id="go-serve-two-closed"),
    pytest.param("bytes=0-1,5-", GO_FILE, [(0, 1), (5, 10)], id="go-serve-closed-and-open"),
    pytest.param("bytes=5-1000", GO_FILE, [(5, 10)], id="go-serve-last-clamped"),
    # Go ignores this "wasteful" request (200); coalescing makes it one honest range.
    pytest.param("bytes=0-,1-,2-,3-,4-", GO_FILE, [(0, 10)], id="go-serve-wasteful-coalesced"),
    pytest.param("bytes=0-9", GO_FILE, [(0, 9)], id="go-serve-all-but-last"),
    pytest.param("bytes=0-10", GO_FILE, [(0, 10)], id="go-serve-exactly-all"),
    pytest.param("bytes=0-11", GO_FILE, [(0, 10)], id="go-serve-one-past"),
    pytest.param("bytes=10-11", GO_FILE, [(10, 10)], id="go-serve-last-byte-clamped"),
    pytest.param("bytes=10-", GO_FILE, [(10, 10)], id="go-serve-last-byte-open"),
    pytest.param("bytes=11-", GO_FILE, UNSATISFIABLE, id="go-serve-starts-at-size"),
    pytest.param("bytes=11-12", GO_FILE, UNSATISFIABLE, id="go-serve-11-12"),
    pytest.param("bytes=12-12", GO_FILE, UNSATISFIABLE, id="go-serve-12-12"),
    pytest.param("bytes=11-100", GO_FILE, UNSATISFIABLE, id="go-serve-11-100"),
    pytest.param("bytes=12-100", GO_FILE, UNSATISFIABLE, id="go-serve-12-100"),
    pytest.param("bytes=100-", GO_FILE, UNSATISFIABLE, id="go-serve-100-"),
    pytest.param("bytes=100-1000", GO_FILE, UNSATISFIABLE, id="go-serve-100-1000"),
    # ---- Go issue 40940 (suffix lengths), a 22-byte file. Go answers 416 to the invalid
    # ones; we ignore invalid headers (rule 4). Go sends 206 with an empty body for -0.
    pytest.param("bytes=--6", GO_INDEX, None, id="go-40940-double-dash"),
    pytest.param("bytes=--0", GO_INDEX, None, id="go-40940-double-dash-zero"),
    pytest.param("bytes=---0", GO_INDEX, None, id="go-40940-triple-dash"),
    pytest.param("bytes=-6", GO_INDEX, [(16, 21)], id="go-40940-suffix"),
    pytest.param("bytes=6-", GO_INDEX, [(6, 21)], id="go-40940-open-ended"),
    pytest.param("bytes=-6-", GO_INDEX, None, id="go-40940-suffix-then-dash"),
    pytest.param("bytes=-0", GO_INDEX, UNSATISFIABLE, id="go-40940-zero-suffix-is-416"),
    pytest.param("bytes=", GO_INDEX, None, id="go-40940-no-ranges"),
    # ---- Rule 1: the unit.
    pytest.param("Bytes=0-1", 10, [(0, 1)], id="unit-case-insensitive"),
    pytest.param("BYTES=0-1", 10, [(0, 1)], id="unit-upper-case"),
    pytest.param("bytes =0-1", 10, [(0, 1)], id="unit-space-before-equals"),
    pytest.param("items=0-1", 10, None, id="unit-unknown-ignored"),
    pytest.param("bytes 0-1", 10, None, id="unit-no-equals"),
    pytest.param("=0-1", 10, None, id="unit-missing"),
    # ---- Rule 2: an empty file ignores every Range (Go), even RFC-satisfiable suffixes.
    pytest.param("bytes=0-", 0, None, id="empty-file-open-ended"),
    pytest.param("bytes=0-0", 0, None, id="empty-file-first-byte"),
    pytest.param("bytes=5-10", 0, None, id="empty-file-past-end"),
    pytest.param("bytes=-5", 0, None, id="empty-file-suffix"),
    pytest.param("bytes=-0", 0, None, id="empty-file-zero-suffix"),
    # ---- Rule 4: syntax, numbers are ASCII decimal digits only.
    pytest.param("bytes=+1-2", 10, None, id="number-plus-sign"),
    pytest.param("bytes=1_0-20", 10, None, id="number-underscore"),
    pytest.param("bytes=\u0661-\u0662", 10, None, id="number-arabic-indic-digits"),
    pytest.param("bytes=²-", 10, None, id="number-superscript"),
    pytest.param("bytes=1.5-2", 10, None, id="number-decimal-point"),
    pytest.param("bytes=-", 10, None, id="suffix-without-length"),
    pytest.param("bytes=1-2-3", 10, None, id="two-dashes"),
    pytest.param("bytes=7,0-1", 10, None, id="element-without-dash-spoils-all"),
    pytest.param("bytes=0-1;2-3", 10, None, id="semicolon-separator"),
    pytest.param("bytes=0-1\v", 10, None, id="vertical-tab-is-not-ows"),
    pytest.param("bytes=\t0-1\t", 10, [(0, 1)], id="tabs-are-ows"),
    # ---- Rule 5: numbers of any size.
    pytest.param("bytes=0-" + "9" * 30, 10, [(0, 9)], id="huge-last-clamped"),
    pytest.param("bytes=-" + "9" * 30, 10, [(0, 9)], id="huge-suffix-whole-file"),
    pytest.param("bytes=" + "9" * 30 + "-", 10, UNSATISFIABLE, id="huge-first-past-end"),
    pytest.param("bytes=" + "9" * 5000 + "-", 10, UNSATISFIABLE, id="over-int-max-str-digits"),
    pytest.param("bytes=" + "0" * 30 + "5-" + "0" * 30 + "7", 10, [(5, 7)], id="leading-zeros"),
    pytest.param("bytes=" + "0" * 30 + "-" + "0" * 30, 10, [(0, 0)], id="many-zeros"),
    pytest.param("bytes=" + "9" * 30 + "-5", 10, None, id="huge-first-small-last-invalid"),
    pytest.param(f"bytes=0-{2**63 - 1}", 2**62, [(0, 2**62 - 1)], id="largest-off-t"),
    # ---- Rule 6: unsatisfiable specs are dropped; none left is 416.
    pytest.param("bytes=-0,0-0", 10, [(0, 0)], id="zero-suffix-dropped"),
    pytest.param("bytes=10-,-0", 10, UNSATISFIABLE, id="all-unsatisfiable"),
    pytest.param("bytes=9-", 10, [(9, 9)], id="last-byte"),
    pytest.param("bytes=10-", 10, UNSATISFIABLE, id="first-pos-equals-size"),
    # ---- Rule 7: overlapping and adjacent ranges coalesce; gaps are kept.
    pytest.param("bytes=0-4,2-6", 10, [(0, 6)], id="overlap"),
    pytest.param("bytes=0-4,5-6", 10, [(0, 6)], id="adjacent"),
    pytest.param("bytes=0-4,6-7", 10, [(0, 4), (6, 7)], id="one-byte-gap-kept"),
    pytest.param("bytes=2-3,0-9", 10, [(0, 9)], id="contained"),
    pytest.param("bytes=0-0,0-0,0-0", 10, [(0, 0)], id="duplicates"),
    pytest.param("bytes=5-6,0-1,1-5", 10, [(0, 6)], id="chain-out-of-order"),
    pytest.param("bytes=0-1,,5-6", 10, [(0, 1), (5, 6)], id="empty-element-between"),
    # ---- Rule 8: request order, a merged range where its earliest member was.
    pytest.param("bytes=8-9,0-1", 10, [(8, 9), (0, 1)], id="order-kept"),
    pytest.param("bytes=-1,0-0", 10, [(9, 9), (0, 0)], id="order-suffix-first"),
    pytest.param("bytes=8-9,2-3,0-1", 10, [(8, 9), (0, 3)], id="order-merged-after"),
    pytest.param("bytes=2-3,8-9,0-1", 10, [(0, 3), (8, 9)], id="order-merged-takes-earliest"),
    pytest.param("bytes=6-7,0-1,8-9", 10, [(6, 9), (0, 1)], id="order-merged-with-first"),
    # ---- Rule 9: one range (or several merged into one) is a plain 206, never multipart.
    pytest.param("bytes=0-", 10, [(0, 9)], id="single-range-whole-file-is-206"),
    pytest.param("bytes=0-0,-1", 1, [(0, 0)], id="single-after-coalescing-one-byte-file"),
]


@pytest.mark.parametrize(("header", "size", "expected"), CASES)
def test_parse_range(header: str, size: int, expected: Expected) -> None:
    assert _run(header, size) == expected


def _specs(count: int) -> str:
    return "bytes=" + ",".join(f"{2 * i}-{2 * i}" for i in range(count))


@pytest.mark.parametrize(
    ("header", "max_ranges", "expected_count"),
    [
        # Rule 3: more than max_ranges range-specs ignore the header (whole file, 200).
        pytest.param(_specs(MAX_RANGES), MAX_RANGES, MAX_RANGES, id="at-default-limit"),
        pytest.param(_specs(MAX_RANGES + 1), MAX_RANGES, None, id="over-default-limit"),
        pytest.param(_specs(3), 2, None, id="over-custom-limit"),
        pytest.param(_specs(2), 2, 2, id="at-custom-limit"),
        # Elements are counted by commas, before parsing: empty ones count too.
        pytest.param("bytes=0-0" + "," * 5, 5, None, id="empty-elements-count"),
        pytest.param("bytes=0-0,0-0,0-0", 2, None, id="counted-before-coalescing"),
    ],
)
def test_too_many_ranges(header: str, max_ranges: int, expected_count: int | None) -> None:
    result = parse_range(header, 1000, max_ranges=max_ranges)
    if expected_count is None:
        assert result is None
    else:
        assert result is not None
        assert len(result) == expected_count


def test_default_max_ranges_is_the_documented_one() -> None:
    assert MAX_RANGES == 200  # Apache's MaxRanges default, see the module docstring
    assert parse_range(_specs(MAX_RANGES + 1), 1000) is None


def test_byte_range() -> None:
    # RFC 9110 §14.4 and §15.3.7.1 examples of Content-Range.
    assert ByteRange(42, 1233).content_range(1234) == "bytes 42-1233/1234"
    assert ByteRange(21010, 47021).content_range(47022) == "bytes 21010-47021/47022"
    assert ByteRange(21010, 47021).length == 26012
    assert ByteRange(0, 0).length == 1
    assert RangeNotSatisfiable(1234).content_range == "bytes */1234"


# ------------------------------------------------------------------- property tests

# Small sizes and positions so that ranges overlap, touch and fall off the end often.
SIZES = st.integers(0, 40)
INT_RANGES = st.tuples(st.integers(0, 50), st.one_of(st.none(), st.integers(0, 50))).map(
    lambda t: ("int", t[0], None if t[1] is None else t[0] + t[1])
)
SUFFIXES = st.integers(0, 50).map(lambda n: ("suffix", n, None))
SPECS = st.lists(st.one_of(INT_RANGES, SUFFIXES), min_size=1, max_size=12)


def _header(specs: list[tuple[str, int, int | None]]) -> str:
    parts = []
    for kind, a, b in specs:
        if kind == "suffix":
            parts.append(f"-{a}")
        else:
            parts.append(f"{a}-" if b is None else f"{a}-{b}")
    return "bytes=" + ",".join(parts)


def _positions(spec: tuple[str, int, int | None], size: int) -> range:
    kind, a, b = spec
    if kind == "suffix":
        return range(max(0, size - a), size) if a else range(0)
    last = size - 1 if b is None else min(b, size - 1)
    return range(a, last + 1)


@NO_DEADLINE
@given(SIZES, SPECS)
def test_ranges_select_exactly_the_requested_bytes(
    size: int, specs: list[tuple[str, int, int | None]]
) -> None:
    header = _header(specs)
    wanted = [set(_positions(spec, size)) for spec in specs]
    union = set().union(*wanted)
    if size == 0:
        assert parse_range(header, size) is None  # rule 2
        return
    if not union:
        with pytest.raises(RangeNotSatisfiable):
            parse_range(header, size)
        return
    result = parse_range(header, size)
    assert result is not None
    # Inside the file, and one range is never multipart-worthy by accident.
    for r in result:
        assert 0 <= r.start <= r.end < size
        assert r.length == r.end - r.start + 1
    # Sorted by position, the ranges neither overlap nor touch (coalescing is complete).
    ordered = sorted(result, key=lambda r: r.start)
    for before, after in itertools.pairwise(ordered):
        assert after.start > before.end + 1
    # The file bytes they select are exactly the union of what was asked for.
    data = bytes(range(size))
    assert b"".join(data[r.start : r.end + 1] for r in ordered) == bytes(
        data[p] for p in sorted(union)
    )
    # Request order: each range sits where its earliest requested member was.
    earliest_member = [
        min(
            i for i, positions in enumerate(wanted) if any(r.start <= p <= r.end for p in positions)
        )
        for r in result
    ]
    assert earliest_member == sorted(set(earliest_member))


@NO_DEADLINE
@given(st.text(max_size=60), st.integers(0, 100))
def test_arbitrary_text_never_raises_anything_else(header: str, size: int) -> None:
    _check_never_raises(header, size)


@NO_DEADLINE
@given(st.text(alphabet="0123456789-, \t=bytesBYTES", max_size=40), st.integers(0, 100))
def test_near_valid_text_never_raises_anything_else(header: str, size: int) -> None:
    _check_never_raises(header, size)
    _check_never_raises("bytes=" + header, size)


def _check_never_raises(header: str, size: int) -> None:
    try:
        result = parse_range(header, size)
    except RangeNotSatisfiable as exc:
        assert exc.size == size > 0
        return
    if result is not None:
        assert result
        assert all(0 <= r.start <= r.end < size for r in result)


# ------------------------------------------------------------------ multipart layout

BOUNDARY: Final = "THIS_STRING_SEPARATES"


def test_multipart_matches_rfc_example() -> None:
    # RFC 9110 §14.6: two ranges of an 8000-byte PDF.
    plan = multipart_plan(
        [ByteRange(500, 999), ByteRange(7000, 7999)], 8000, "application/pdf", BOUNDARY
    )
    (head1, range1), (head2, range2) = plan.parts
    assert head1 == (
        b"--THIS_STRING_SEPARATES\r\n"
        b"Content-Type: application/pdf\r\n"
        b"Content-Range: bytes 500-999/8000\r\n"
        b"\r\n"
    )
    assert head2 == (
        b"\r\n--THIS_STRING_SEPARATES\r\n"
        b"Content-Type: application/pdf\r\n"
        b"Content-Range: bytes 7000-7999/8000\r\n"
        b"\r\n"
    )
    assert (range1, range2) == (ByteRange(500, 999), ByteRange(7000, 7999))
    assert plan.trailer == b"\r\n--THIS_STRING_SEPARATES--\r\n"
    assert plan.content_length == len(head1) + 500 + len(head2) + 1000 + len(plan.trailer)
    assert multipart_content_type(BOUNDARY) == (
        "multipart/byteranges; boundary=THIS_STRING_SEPARATES"
    )


def test_multipart_without_content_type() -> None:
    plan = multipart_plan([ByteRange(0, 0), ByteRange(2, 2)], 3, None, "b")
    assert plan.parts[0][0] == b"--b\r\nContent-Range: bytes 0-0/3\r\n\r\n"


def _assemble(plan: ranges.MultipartPlan, data: bytes) -> bytes:
    """What the server writes: each head, then the range's file bytes, then the trailer."""
    out = bytearray()
    for head, r in plan.parts:
        out += head
        out += data[r.start : r.start + r.length]
    out += plan.trailer
    return bytes(out)


@NO_DEADLINE
@given(SPECS.filter(lambda specs: len(specs) >= 2), st.integers(2, 40))
def test_multipart_body_parses_back_to_the_ranges(
    specs: list[tuple[str, int, int | None]], size: int
) -> None:
    try:
        result = parse_range(_header(specs), size)
    except RangeNotSatisfiable:
        return
    if result is None or len(result) < 2:
        return
    # Printable file content without CR/LF, so a MIME parser cannot mistake it for structure.
    data = bytes(65 + i % 26 for i in range(size))
    boundary = make_boundary()
    plan = multipart_plan(result, size, "text/plain", boundary)
    body = _assemble(plan, data)
    assert len(body) == plan.content_length
    # An independent reader of multipart bodies (Python's email package) sees our parts.
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {multipart_content_type(boundary)}\r\n\r\n".encode() + body
    )
    assert message.is_multipart()
    parts = list(message.iter_parts())
    assert len(parts) == len(result)
    for part, r in zip(parts, result, strict=True):
        assert part["Content-Type"] == "text/plain"
        assert part["Content-Range"] == r.content_range(size)
        assert part.get_payload(decode=True) == data[r.start : r.end + 1]


@pytest.mark.parametrize(
    "ranges_",
    [pytest.param([], id="none"), pytest.param([ByteRange(0, 1)], id="single-range")],
)
def test_multipart_refuses_fewer_than_two_ranges(ranges_: list[ByteRange]) -> None:
    with pytest.raises(ValueError, match="single range"):
        multipart_plan(ranges_, 10, "text/plain", BOUNDARY)


@pytest.mark.parametrize(
    "boundary",
    ["", "x" * 71, "a b", 'a"b', "a\r\nb", "a;b", "é"],
    ids=["empty", "71-chars", "space", "quote", "crlf", "semicolon", "non-ascii"],
)
def test_multipart_refuses_unsafe_boundaries(boundary: str) -> None:
    with pytest.raises(ValueError, match="boundary"):
        multipart_plan([ByteRange(0, 0), ByteRange(2, 2)], 3, None, boundary)


@pytest.mark.parametrize("content_type", ["text/plain\r\nSet-Cookie: a=b", "text/plain\n"])
def test_multipart_refuses_header_injection(content_type: str) -> None:
    with pytest.raises(ValueError, match="Content-Type"):
        multipart_plan([ByteRange(0, 0), ByteRange(2, 2)], 3, content_type, BOUNDARY)


def test_multipart_accepts_a_70_char_boundary() -> None:
    plan = multipart_plan([ByteRange(0, 0), ByteRange(2, 2)], 3, None, "x" * 70)
    assert plan.trailer == b"\r\n--" + b"x" * 70 + b"--\r\n"


def test_make_boundary() -> None:
    first, second = make_boundary(), make_boundary()
    assert len(first) == 32
    assert set(first) <= set("0123456789abcdef")
    assert first != second  # fresh per response
    multipart_plan([ByteRange(0, 0), ByteRange(2, 2)], 3, None, first)  # and acceptable
