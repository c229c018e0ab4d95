"""Conditional requests: RFC 9110 §13.2.2 precondition evaluation and ``If-Range``.

Theory of operation
-------------------
A file response carries two validators: ``ETag`` (strong, see :mod:`wirespeed.proto.etag`)
and ``Last-Modified`` (an HTTP-date, one-second resolution). A client sends them back in
conditional headers, and the server evaluates those in the order RFC 9110 §13.2.2 fixes,
stopping at the first decisive answer::

    1. If-Match present          -> false: 412                          (strong comparison)
    2. else If-Unmodified-Since  -> false: 412        (ignored if the date is invalid)
    3. If-None-Match present     -> false: 304 for GET/HEAD, else 412   (weak comparison)
    4. else If-Modified-Since    -> false: 304        (GET/HEAD only; invalid date ignored)
    5. GET with Range + If-Range -> false: ignore Range, send 200       (:func:`if_range_allows`)
    6. perform the method

Steps 1-4 are :func:`evaluate_preconditions`; step 5 is :func:`if_range_allows`, called just
before :func:`wirespeed.proto.ranges.parse_range`. The order is what makes the combinations
come out right: a failing ``If-Match`` wins over a matching ``If-None-Match`` (412, not 304),
and the ETag header of each pair makes its date partner be ignored, because entity tags are the
more precise validator.

Dates compare in whole seconds: the ``Last-Modified`` we send is the mtime floored to the
second (:func:`wirespeed.proto.httpdate.format_http_date`), so the mtime is floored the same
way here. Otherwise a file modified at ``12.5`` would never be "not modified since" the
``12`` we told the client, and every revalidation would resend the whole file.

Everything here is pure: values in, a decision out. The caller reads the headers (``None``
when absent; repeated lines joined with ``", "``) and the file's ``fstat``.
"""

from __future__ import annotations

from enum import Enum

from wirespeed.proto.etag import match_etag_list
from wirespeed.proto.httpdate import parse_http_date

__all__ = ["Precondition", "evaluate_preconditions", "if_range_allows"]

# Methods for which a failed If-None-Match means "use your cache" rather than "refused", and the
# only methods If-Modified-Since applies to (RFC 9110 §13.1.2, §13.1.3). Methods are
# case-sensitive (RFC 9110 §9.1), so "get" is not GET.
_SAFE_READ_METHODS = frozenset(("GET", "HEAD"))


class Precondition(Enum):
    """Outcome of :func:`evaluate_preconditions`; ``value`` is the status code it stands for."""

    PROCEED = 200
    """Serve the request as if it had no preconditions (the status may still become 206/416)."""

    NOT_MODIFIED = 304
    """Send 304 with the validators and cache headers a 200 would carry, and no body."""

    PRECONDITION_FAILED = 412
    """Send 412; the client's assumption about the current representation is wrong."""


def evaluate_preconditions(
    method: str,
    etag: str | None,
    last_modified: float | None,
    *,
    if_match: str | None = None,
    if_unmodified_since: str | None = None,
    if_none_match: str | None = None,
    if_modified_since: str | None = None,
) -> Precondition:
    """Evaluate RFC 9110 §13.2.2 steps 1-4 for an existing representation.

    *etag* is the representation's entity tag (``None`` if it has none); *last_modified* its
    modification time in seconds since the epoch (``None`` if unknown; a float is floored to
    the second). Each ``if_*`` argument is the raw header value, or ``None`` when absent.

    Behaviour a caller can observe:

    * ``If-Match: *`` passes and a list passes if any tag strongly equals *etag*; a weak
      *etag* therefore never passes a list. Failure is 412.
    * ``If-Unmodified-Since`` is ignored when ``If-Match`` is present, when the date is
      invalid (including a list of dates) or when *last_modified* is ``None``; it fails (412)
      when the representation changed after the date.
    * ``If-None-Match: *`` or a weakly matching tag means "you have it": 304 for GET and
      HEAD, 412 for any other method (the "create only if absent" idiom of PUT).
    * ``If-Modified-Since`` is ignored when ``If-None-Match`` is present, for methods other
      than GET/HEAD, and for invalid dates; an unchanged representation (modified at or
      before the date) gives 304.

    Pitfalls: RFC 9110 §13.2.1 says to ignore preconditions entirely when the response
    without them would not be 2xx or 412, so resolve 404/403/405 first and call this only for
    a file you would serve. The date rules assume ``Last-Modified`` is not in the future;
    clamp a file's mtime to the current time before both sending and passing it here.

    >>> evaluate_preconditions("GET", '"a"', 784111777.5, if_none_match='W/"a"')
    <Precondition.NOT_MODIFIED: 304>
    >>> evaluate_preconditions("GET", '"a"', 784111777.5, if_match='"b"', if_none_match='"a"')
    <Precondition.PRECONDITION_FAILED: 412>
    """
    # Step 1: If-Match; step 2: If-Unmodified-Since only without If-Match.
    if if_match is not None:
        if not match_etag_list(if_match, etag, weak=False):
            return Precondition.PRECONDITION_FAILED
    elif if_unmodified_since is not None and last_modified is not None:
        since = parse_http_date(if_unmodified_since)
        if since is not None and int(last_modified // 1) > since:
            return Precondition.PRECONDITION_FAILED
    # Step 3: If-None-Match; step 4: If-Modified-Since only without If-None-Match.
    if if_none_match is not None:
        if match_etag_list(if_none_match, etag, weak=True):
            if method in _SAFE_READ_METHODS:
                return Precondition.NOT_MODIFIED
            return Precondition.PRECONDITION_FAILED
    elif (
        if_modified_since is not None and last_modified is not None and method in _SAFE_READ_METHODS
    ):
        since = parse_http_date(if_modified_since)
        if since is not None and int(last_modified // 1) <= since:
            return Precondition.NOT_MODIFIED
    return Precondition.PROCEED


def if_range_allows(if_range: str | None, etag: str | None, last_modified: float | None) -> bool:
    """RFC 9110 §13.1.5: whether the ``Range`` header may be honoured (step 5 of §13.2.2).

    Returns ``True`` when *if_range* is ``None`` (no condition). Otherwise the value is an
    entity tag or an HTTP-date, and the condition holds only for

    * a strong entity tag equal to *etag* (strong comparison: a weak tag on either side
      never matches, since a client must not send one and a weak validator cannot promise
      byte-identical content), or
    * an HTTP-date exactly equal to *last_modified* floored to the second -- equality, not
      "at or before", because the client is asking "is it still the copy I have?".

    ``False`` means: ignore ``Range`` and send the whole representation with 200, which the
    client can use to replace its stale partial copy. Call this only for GET requests that
    carry a ``Range`` header (RFC 9110 §13.1.5 tells servers to ignore ``If-Range`` without
    one).

    Pitfall: a date is a weaker validator than our nanosecond ETag; two writes within the
    same second are indistinguishable by date. Clients that have the ETag must use it
    (RFC 9110 §13.1.5), so this only matters for clients that ignore ETags.

    >>> if_range_allows('"1234-abc"', '"1234-abc"', 784111777.0)
    True
    >>> if_range_allows("Sun, 06 Nov 1994 08:49:37 GMT", None, 784111777.9)
    True
    >>> if_range_allows('W/"1234-abc"', 'W/"1234-abc"', None)
    False
    """
    if if_range is None:
        return True
    value = if_range.strip(" \t")
    if value.startswith('"'):
        return etag is not None and value == etag  # `etag` starts with '"', so it is strong
    # Not a strong tag, so a date -- a weak tag (W/"...") fails to parse as one: False.
    if last_modified is None:
        return False
    return parse_http_date(value) == int(last_modified // 1)
