"""Byte ranges (RFC 9110 §14): parse ``Range``, plan ``multipart/byteranges`` for sendfile.

Theory of operation
-------------------
:func:`parse_range` turns a ``Range`` header and the file size into one of four answers, each
a different response::

    None                   -> 200, whole file (header ignored)
    [ByteRange]            -> 206, Content-Range: bytes FIRST-LAST/SIZE, body by one sendfile
    [ByteRange, ...]       -> 206, multipart/byteranges, see multipart_plan()
    raise RangeNotSatisfiable -> 416, Content-Range: bytes */SIZE

Every response to a file (200, 206, 416) also sends ``Accept-Ranges: bytes``. The rules, in
the order they are applied (each is a row of ``tests/test_ranges.py``):

1. **Unit.** Only ``bytes`` (case-insensitive, RFC 9110 §14.1) is understood; any other unit
   is ignored -> ``None`` (§14.2: a server MUST ignore units it does not understand).
2. **Empty file.** Any ``Range`` on a zero-length file -> ``None``: 200 with an empty body.
   RFC 9110 would answer 416 to ``bytes=0-`` and count ``bytes=-5`` as satisfiable, but an
   empty range cannot be written as a ``Content-Range``, and some clients put a ``Range`` on
   every request; the 200 gives them exactly the (empty) content. Go's ``ServeContent`` does
   the same.
3. **Too many ranges.** More than *max_ranges* range-specs (default :data:`MAX_RANGES`) ->
   ``None``: serve the whole file rather than hundreds of tiny parts, each costing a ~100-byte
   part head and a syscall. RFC 9110 §14.2 lets a server ignore such a header; Apache does the
   same past its ``MaxRanges`` (200 by default since CVE-2011-3192), nginx past ``max_ranges``.
   Counted before parsing, by commas, so an abusive header costs one ``str.count``.
4. **Syntax.** A header that is not a valid ``ranges-specifier`` -> ``None``. One invalid
   spec spoils the whole header (``bytes=0-2,5-4``: last < first). RFC 9110 §14.2 allows
   ignoring or rejecting; ignoring always gives the client correct, complete content, while
   Go and nginx answer 416. Parsing follows Go's (and Apache's) laxity about spaces and tabs
   around numbers, dashes and commas; numbers are ASCII digits only (``int()`` alone would
   accept ``+1``, ``1_0`` and non-ASCII digits).
5. **Clamping.** A last-pos past the end is cut to the last byte; a suffix longer than the
   file selects the whole file (§14.1.2). Numbers of any length are fine: beyond 19 digits
   (the width of the largest ``off_t``) a number only counts as "past any end".
6. **Unsatisfiable specs** -- first-pos at or past the end, or a zero-length suffix
   ``bytes=-0`` -- are dropped (§14.1.1). If none remain -> :class:`RangeNotSatisfiable`
   (416). Go sends 206 with an empty body for ``bytes=-0``, whose ``Content-Range`` is invalid.
7. **Coalescing.** Overlapping *and adjacent* ranges merge (§15.3.7.2 allows it "regardless of
   the order" they were requested). This makes the sum of the returned lengths at most the
   file size, so Go's "ignore ranges that add up to more than the file" rule is not needed:
   ``bytes=0-,0-,0-,...`` (the CVE-2011-3192 amplification) is answered with one range.
   Ranges separated by a gap are kept apart even when the gap is smaller than a part head;
   the client gets exactly the bytes it asked for.
8. **Order.** The result follows the order of the request, each merged range taking the
   position of its earliest member (§15.3.7.2: parts SHOULD be sent in request order).
9. **One range is never multipart** (§15.3.7.2: MUST NOT), including several requested
   ranges that merged into one; :func:`multipart_plan` refuses fewer than two ranges.

Ranges apply to GET only (§14.2); the caller checks the method and ``If-Range`` first::

    ranges = None
    if method == "GET" and range_header is not None and if_range_allows(if_range, etag, mtime):
        try:
            ranges = parse_range(range_header, size)
        except RangeNotSatisfiable as exc:
            ...  # 416, Content-Range: exc.content_range
    if ranges is None: ...            # 200, whole file
    elif len(ranges) == 1: ...        # 206, ranges[0].content_range(size), sendfile(start, length)
    else:
        boundary = make_boundary()
        parts, trailer, length = multipart_plan(ranges, size, content_type, boundary)
        ...  # 206, Content-Type: multipart_content_type(boundary), Content-Length: length;
             # for head, r in parts: send head, sendfile(r.start, r.length); then send trailer

Nothing here does IO; :func:`make_boundary` draws from :mod:`secrets`.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from operator import itemgetter
from typing import Final, NamedTuple

__all__ = [
    "MAX_RANGES",
    "ByteRange",
    "MultipartPlan",
    "RangeNotSatisfiable",
    "make_boundary",
    "multipart_content_type",
    "multipart_plan",
    "parse_range",
]

MAX_RANGES: Final = 200
"""Default limit on range-specs in one header: Apache's ``MaxRanges`` default (rule 3)."""

# 2**63 - 1, the largest off_t and so the largest possible file, has 19 digits; any longer
# number (after leading zeros) is past every end, and is represented by this stand-in.
_MAX_DIGITS: Final = 19
_PAST_ANY_END: Final = 1 << 63

# RFC 2046 §5.1.1 limits a boundary to 70 characters. We accept the subset of its bchars that
# are also token characters, so `boundary=` never needs quoting in Content-Type.
_BOUNDARY_MAX: Final = 70
_BOUNDARY_CHARS: Final = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789'+-._"
)
# 16 random bytes = 128 bits, hex-encoded to 32 characters: a body cannot contain the boundary
# by accident, and an uploader cannot plant it, because it is new for every response. (Go's
# multipart writer uses 30 bytes; 16 keeps each part head ~28 bytes shorter.)
_BOUNDARY_RANDOM_BYTES: Final = 16

_OWS: Final = " \t"


@dataclass(frozen=True, slots=True)
class ByteRange:
    """A satisfiable byte range, ``start`` to ``end`` *inclusive* as in ``Content-Range``.

    ``0 <= start <= end < size`` always holds for ranges from :func:`parse_range`. The
    sendfile arguments are ``offset=start, count=length``.

    >>> r = ByteRange(0, 499)
    >>> r.length, r.content_range(10000)
    (500, 'bytes 0-499/10000')
    """

    start: int
    end: int

    @property
    def length(self) -> int:
        """Number of bytes in the range (``end - start + 1``)."""
        return self.end - self.start + 1

    def content_range(self, size: int) -> str:
        """The ``Content-Range`` value for this range of a *size*-byte representation."""
        return f"bytes {self.start}-{self.end}/{size}"


class RangeNotSatisfiable(Exception):
    """No range in the header overlaps the file: answer 416 (RFC 9110 §15.5.17).

    The response carries ``Content-Range: bytes */SIZE`` (:attr:`content_range`) so the
    client learns the current size -- ``curl -C -`` uses it to see a download is complete.
    """

    def __init__(self, size: int) -> None:
        super().__init__(f"no satisfiable range in a {size}-byte representation")
        self.size = size

    @property
    def content_range(self) -> str:
        """``bytes */SIZE``, the ``Content-Range`` value of the 416 response."""
        return f"bytes */{self.size}"


def parse_range(header: str, size: int, *, max_ranges: int = MAX_RANGES) -> list[ByteRange] | None:
    """Parse a ``Range`` header value against a *size*-byte file.

    Returns ``None`` to mean "ignore the header, send 200 with the whole file", a list of one
    :class:`ByteRange` for a single-part 206, or a list of several for a multipart 206. Raises
    :class:`RangeNotSatisfiable` (416) when the header is valid but selects nothing. Never
    raises anything else, whatever the header says. The module docstring lists the rules;
    in short: unknown units, invalid syntax, empty files and more than *max_ranges* specs give
    ``None``; ranges are clamped to the file, overlapping or adjacent ones merged, and the
    result keeps the request's order.

    >>> parse_range("bytes=0-499", 10000)
    [ByteRange(start=0, end=499)]
    >>> parse_range("bytes=-500", 10000)
    [ByteRange(start=9500, end=9999)]
    >>> parse_range("bytes=0-0,-1", 10000)
    [ByteRange(start=0, end=0), ByteRange(start=9999, end=9999)]
    >>> parse_range("bytes=500-700,601-999", 10000)  # overlapping: one range, not multipart
    [ByteRange(start=500, end=999)]
    >>> parse_range("bytes=5-4", 10000) is None  # invalid: last-pos < first-pos
    True
    """
    # Rule 1: the unit. The fast path is the header every real client sends.
    if header.startswith("bytes="):
        range_set = header[6:]
    else:
        unit, equals, range_set = header.partition("=")
        if not equals or unit.strip(_OWS).lower() != "bytes":
            return None
    # Rule 2: empty file. Rule 3: too many ranges.
    if size <= 0 or range_set.count(",") >= max_ranges:
        return None

    spans: list[tuple[int, int]] = []
    seen_spec = False
    for element in range_set.split(","):
        first, dash, last = element.partition("-")
        if not dash:
            if element.strip(_OWS):
                return None  # rule 4: "bytes=7", no dash
            continue  # an empty list element, allowed by RFC 9110 §5.6.1
        seen_spec = True
        first = first.strip(_OWS)
        last = last.strip(_OWS)
        if first:  # int-range: first-pos "-" [ last-pos ]
            start = _decimal(first)
            if start < 0:
                return None  # rule 4: not a number
            if last:
                end = _decimal(last)
                if end < start:
                    return None  # rule 4: last-pos < first-pos, or not a number (-1)
                if end >= size:
                    end = size - 1  # rule 5: clamp
            else:
                end = size - 1  # open-ended: "9500-"
            if start >= size:
                continue  # rule 6: starts past the end
        else:  # suffix-range: "-" suffix-length
            suffix = _decimal(last)
            if suffix < 0:
                return None  # rule 4: "bytes=-", "bytes=--5", "bytes=-6-"
            if suffix == 0:
                continue  # rule 6: "bytes=-0" selects nothing
            start = size - suffix if suffix < size else 0  # rule 5: longer than the file
            end = size - 1
        spans.append((start, end))

    if not seen_spec:
        return None  # rule 4: "bytes=" and "bytes= , ," have no range-spec at all
    if not spans:
        raise RangeNotSatisfiable(size)  # rule 6
    if len(spans) == 1:
        return [ByteRange(*spans[0])]
    return _coalesce(spans)


def _decimal(text: str) -> int:
    """The value of a 1*DIGIT field, or -1 if *text* is not one (rule 4/5)."""
    if not (text.isdigit() and text.isascii()):
        return -1
    if len(text) > _MAX_DIGITS:
        text = text.lstrip("0")
        if len(text) > _MAX_DIGITS:
            # Past any end. Two such numbers are not ordered against each other, so a
            # last-pos < first-pos pair of them reads as unsatisfiable (416), not invalid.
            return _PAST_ANY_END
        if not text:
            return 0
    return int(text)


def _coalesce(spans: list[tuple[int, int]]) -> list[ByteRange]:
    """Merge overlapping and adjacent spans (rule 7), keeping request order (rule 8)."""
    by_start = sorted(range(len(spans)), key=spans.__getitem__)
    merged: list[list[int]] = []  # [start, end, index of the earliest requested member]
    for index in by_start:
        start, end = spans[index]
        if merged and start <= merged[-1][1] + 1:
            tail = merged[-1]
            tail[1] = max(tail[1], end)
            tail[2] = min(tail[2], index)
        else:
            merged.append([start, end, index])
    merged.sort(key=itemgetter(2))
    return [ByteRange(start, end) for start, end, _ in merged]


class MultipartPlan(NamedTuple):
    """A ``multipart/byteranges`` body laid out for sendfile (see :func:`multipart_plan`)."""

    parts: list[tuple[bytes, ByteRange]]
    """Each part's head (boundary line and part headers) and the file range that follows it."""
    trailer: bytes
    """The closing delimiter, sent after the last range."""
    content_length: int
    """Total body length: every head, every range and the trailer."""


def multipart_plan(
    ranges: list[ByteRange], size: int, content_type: str | None, boundary: str
) -> MultipartPlan:
    """Lay out a ``multipart/byteranges`` body (RFC 9110 §14.6) around file ranges.

    The server sends, in order, ``head`` then the file bytes of ``range`` (by sendfile, never
    through Python) for each ``(head, range)`` in ``parts``, then ``trailer``. Everything
    that is not file data is precomputed, so ``content_length`` is known before the first
    byte and the response needs no chunked encoding. Each part gets the ``Content-Type`` the
    whole file would have had (omitted when *content_type* is ``None``) and its
    ``Content-Range``. The response's own ``Content-Type`` is
    :func:`multipart_content_type` of the same *boundary*.

    Raises ``ValueError`` for fewer than two ranges -- a single range is sent as a plain 206,
    never as multipart (RFC 9110 §15.3.7.2) --, for a boundary that is not 1-70 of
    ``A-Z a-z 0-9 ' + - . _``, and for a *content_type* containing CR or LF.

    >>> plan = multipart_plan([ByteRange(0, 0), ByteRange(9, 9)], 10, "text/plain", "B")
    >>> plan.parts[1][0]
    b'\\r\\n--B\\r\\nContent-Type: text/plain\\r\\nContent-Range: bytes 9-9/10\\r\\n\\r\\n'
    >>> plan.trailer, plan.content_length
    (b'\\r\\n--B--\\r\\n', 137)
    """
    if len(ranges) < 2:
        raise ValueError("a single range is sent as a plain 206, never as multipart")
    if not 0 < len(boundary) <= _BOUNDARY_MAX or not _BOUNDARY_CHARS.issuperset(boundary):
        raise ValueError(f"invalid multipart boundary {boundary!r}")
    if content_type is None:
        type_line = b""
    elif "\r" in content_type or "\n" in content_type:
        raise ValueError(f"invalid Content-Type {content_type!r}")  # would inject a header
    else:
        type_line = f"Content-Type: {content_type}\r\n".encode("latin-1")
    # A delimiter is CRLF "--" boundary; the CRLF ends the previous part's data, so the first
    # delimiter, at the very start of the body, has none (RFC 2046 §5.1.1).
    delimiter = f"\r\n--{boundary}\r\n".encode()
    parts: list[tuple[bytes, ByteRange]] = []
    length = 0
    for r in ranges:
        head = b"".join(
            (
                delimiter if parts else delimiter[2:],
                type_line,
                f"Content-Range: bytes {r.start}-{r.end}/{size}\r\n\r\n".encode(),
            )
        )
        parts.append((head, r))
        length += len(head) + r.length
    trailer = f"\r\n--{boundary}--\r\n".encode()
    return MultipartPlan(parts, trailer, length + len(trailer))


def multipart_content_type(boundary: str) -> str:
    """The ``Content-Type`` of a multipart 206: ``multipart/byteranges; boundary=...``."""
    return f"multipart/byteranges; boundary={boundary}"


def make_boundary() -> str:
    """A fresh random boundary for one multipart response: 32 hex characters (128 bits)."""
    return secrets.token_hex(_BOUNDARY_RANDOM_BYTES)
