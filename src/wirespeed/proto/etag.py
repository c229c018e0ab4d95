"""Entity tags: make them for files, compare them, match them against request lists.

Theory of operation
-------------------
An entity tag (RFC 9110 §8.8.3) is an opaque quoted string, optionally prefixed with ``W/``
to mark it *weak*::

    entity-tag = [ "W/" ] DQUOTE *etagc DQUOTE      ; etagc: 0x21, 0x23-0x7E, 0x80-0xFF

Files get a **strong** tag built from the size and the nanosecond mtime of the descriptor being
sent (:func:`make_etag`). Nothing is hashed: hashing would read the whole file, which is exactly
what a zero-copy server avoids. nginx does the same with whole-second mtimes; nanoseconds make a
rewrite within the same second (same size) produce a new tag wherever the filesystem keeps
sub-second times. A precompressed variant adds a suffix, because a ``.br`` file and the original
are different representations and must never share a tag (RFC 9110 §8.8.3.3).

Two comparison functions exist (RFC 9110 §8.8.3.2) and each header picks one:

============ ============ ============ ===========
ETag 1       ETag 2       strong       weak
============ ============ ============ ===========
``W/"1"``    ``W/"1"``    no match     match
``W/"1"``    ``W/"2"``    no match     no match
``W/"1"``    ``"1"``      no match     match
``"1"``      ``"1"``      match        match
============ ============ ============ ===========

``If-Match`` and ``If-Range`` use strong comparison, ``If-None-Match`` weak. Lists are scanned
quote to quote, not split on commas, because a comma is a legal ``etagc`` inside the quotes.
The characters inside the quotes are not validated: the tags are compared with our own
well-formed tag, which a malformed one can never equal.
"""

from __future__ import annotations

from typing import Final

__all__ = ["is_weak", "make_etag", "match_etag_list", "strong_compare", "weak_compare"]

# Characters allowed in a variant suffix: etagc without obs-text (0x80-0xFF could not be
# encoded as ASCII header bytes) and without "," so the tag stays simple to read in logs.
_VARIANT_CHARS: Final = frozenset(chr(c) for c in range(0x21, 0x7F)) - {'"', ","}
_WEAK_PREFIX: Final = "W/"


def make_etag(size: int, mtime_ns: int, variant: str | None = None) -> str:
    """Return the strong entity tag of a file: ``"<size hex>-<mtime_ns hex>[-<variant>]"``.

    Pass the size and ``st_mtime_ns`` from ``fstat`` of the descriptor you will send, never
    from an earlier ``stat`` of the path, or the tag may describe a different file. *variant*
    names a precompressed or otherwise transformed representation (``"br"``, ``"gz"``) and
    must be a short run of visible ASCII without ``"`` or ``,``; ``ValueError`` otherwise.

    Pitfall: a stat-based tag is only as fine as the filesystem's timestamps. Two rewrites of
    the same size within one timestamp tick (1 s on some old filesystems, 1-10 ms on many
    others) share a tag, as with nginx and Apache.

    >>> make_etag(4660, 2748)
    '"1234-abc"'
    >>> make_etag(4660, 2748, "br")
    '"1234-abc-br"'
    """
    if variant is None:
        return f'"{size:x}-{mtime_ns:x}"'
    if not variant or not _VARIANT_CHARS.issuperset(variant):
        raise ValueError(f"invalid ETag variant {variant!r}")
    return f'"{size:x}-{mtime_ns:x}-{variant}"'


def is_weak(etag: str) -> bool:
    """Whether *etag* carries the ``W/`` weakness indicator (case-sensitive, RFC 9110 §8.8.3)."""
    return etag.startswith(_WEAK_PREFIX)


def strong_compare(a: str, b: str) -> bool:
    """RFC 9110 §8.8.3.2 strong comparison: both tags strong and character-for-character equal."""
    return a == b and not a.startswith(_WEAK_PREFIX)


def weak_compare(a: str, b: str) -> bool:
    """RFC 9110 §8.8.3.2 weak comparison: the opaque quoted parts are equal; ``W/`` is ignored."""
    return a.removeprefix(_WEAK_PREFIX) == b.removeprefix(_WEAK_PREFIX)


def match_etag_list(field_value: str, etag: str | None, *, weak: bool) -> bool:
    """Whether an ``If-Match``/``If-None-Match`` value matches the current representation.

    *field_value* is ``*`` or a comma-separated list of entity tags (join repeated header lines
    with ``", "`` first, RFC 9110 §5.3). *etag* is the current representation's tag, or ``None``
    if it has none. The caller guarantees a current representation exists, so ``*`` always
    matches. Otherwise each listed tag is compared with *etag*, weakly if *weak* else strongly.

    A malformed list is read up to the first element that is not an entity tag; tags before it
    still count. So ``If-None-Match: ,`` matches nothing (the request proceeds, as in Go) and a
    malformed ``If-Match`` fails (412), the safe outcome for a request that wanted a guarantee.

    >>> match_etag_list('"x", W/"a"', '"a"', weak=True)
    True
    >>> match_etag_list('"x", W/"a"', '"a"', weak=False)
    False
    """
    value = field_value.strip(" \t")
    if value == "*":
        return True
    if etag is None:
        return False
    if value == etag:  # fast path: the one tag we sent, echoed back
        return weak or not etag.startswith(_WEAK_PREFIX)
    if weak:
        target = etag.removeprefix(_WEAK_PREFIX)
    elif etag.startswith(_WEAK_PREFIX):
        return False  # a weak tag never matches strongly
    else:
        target = etag
    i, n = 0, len(value)
    while i < n:
        c = value[i]
        if c in " \t,":  # OWS and empty list elements (RFC 9110 §5.6.1)
            i += 1
            continue
        tag_is_weak = value.startswith(_WEAK_PREFIX, i)
        if tag_is_weak:
            i += 2
        if i >= n or value[i] != '"':
            return False  # not an entity tag: stop reading
        close = value.find('"', i + 1)
        if close < 0:
            return False  # unterminated tag
        if (weak or not tag_is_weak) and value[i : close + 1] == target:
            return True
        i = close + 1
    return False
