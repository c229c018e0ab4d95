"""HTTP-date: format the preferred form, parse all three (RFC 9110 §5.6.7).

Theory of operation
-------------------
HTTP carries timestamps as text with one-second resolution. A sender generates only the
*IMF-fixdate* form; a recipient must accept it and two obsolete forms::

    Sun, 06 Nov 1994 08:49:37 GMT    ; IMF-fixdate (preferred, the only one we generate)
    Sunday, 06-Nov-94 08:49:37 GMT   ; obsolete RFC 850 form, two-digit year
    Sun Nov  6 08:49:37 1994         ; ANSI C asctime() form

Every form has a fixed layout, so parsing is slicing at known offsets and checking the
separators, not a regular expression or ``strptime`` (both slower, and ``strptime`` is
locale-dependent). Names are case-sensitive (the grammar uses ``%s"..."``); anything that is not
exactly one of the three layouts, including a list of dates or the old Internet Explorer
``; length=N`` suffix, parses to ``None``, which is what RFC 9110 §13.1.3/§13.1.4 tell a
recipient to do with an invalid date: ignore the header.

Times are handled as integer seconds since the Unix epoch (UTC). The day of the week is
checked for spelling only, never against the date (RFC 9110 gives no rule, and Go and
Python's ``email.utils`` do the same). Leap seconds (``:60``) are accepted, as the grammar
allows, and count as the first second of the next minute.

Formatting runs per response (``Last-Modified`` of every file, and ``Date`` if the server wants
it), so :func:`format_http_date` memoises the string per whole second; parsing memoises the
IMF-fixdate form, which is what clients echo back in ``If-Modified-Since``; see ``_CACHE_SIZE``.
Measured with ``timeit`` on the 2-core dev box: a cached format or parse takes ~0.15 us, an
uncached parse ~1.8 us (``email.utils.parsedate_to_datetime``: ~3 us).
This module does no IO; it reads the clock only to place a two-digit RFC 850 year, and takes
``now`` for tests.
"""

from __future__ import annotations

import time
from datetime import date
from functools import lru_cache
from typing import Final

__all__ = ["format_http_date", "parse_http_date"]

_DAY_NAMES: Final = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")  # index = tm_wday
_DAY_NAMES_SET: Final = frozenset(_DAY_NAMES)
_DAY_NAMES_LONG: Final = frozenset(
    ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
)
_MONTH_NAMES: Final = (
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
)  # fmt: skip
_MONTHS: Final = {name: number for number, name in enumerate(_MONTH_NAMES, 1)}

# date.toordinal() of 1970-01-01: converts a proleptic Gregorian day number to Unix days.
_EPOCH_ORDINAL: Final = 719163
_SECONDS_PER_DAY: Final = 86400

# An IMF-fixdate has a four-digit year, so only 0001-01-01T00:00:00 .. 9999-12-31T23:59:59 can
# be written (year 0 does not exist in the proleptic Gregorian calendar that `datetime` uses).
_MIN_TIMESTAMP: Final = (1 - _EPOCH_ORDINAL) * _SECONDS_PER_DAY
_MAX_TIMESTAMP: Final = (date(9999, 12, 31).toordinal() + 1 - _EPOCH_ORDINAL) * _SECONDS_PER_DAY - 1

# Distinct seconds kept formatted, and distinct IMF-fixdates kept parsed (clients mostly echo a
# Last-Modified we sent, so both caches see the same few values). Arbitrary: enough for the
# mtimes of ~1000 hot files plus the current second for `Date`; an entry is ~200 bytes, so the
# worst case is ~400 KiB per worker, and a flood of distinct dates only evicts entries.
_CACHE_SIZE: Final = 1024

# RFC 9110 §5.6.7: a two-digit year that "appears to be more than 50 years in the future" is
# the most recent past year with the same last two digits.
_RFC850_FUTURE_YEARS: Final = 50

_LEN_IMF_FIXDATE: Final = len("Sun, 06 Nov 1994 08:49:37 GMT")  # 29
_LEN_ASCTIME: Final = len("Sun Nov  6 08:49:37 1994")  # 24
_LEN_RFC850_TAIL: Final = len(" 06-Nov-94 08:49:37 GMT")  # 23, after "Sunday,"


def format_http_date(timestamp: float) -> str:
    """Return *timestamp* (seconds since the Unix epoch) as an IMF-fixdate.

    The fraction of a second is dropped by flooring, so a file modified at ``12.9`` gets the
    same ``Last-Modified`` as one modified at ``12.0`` -- the comparisons in
    :mod:`wirespeed.proto.conditional` floor the same way. Results are memoised per whole
    second, so formatting the ``Last-Modified`` of a hot file or the ``Date`` of the current
    second is a cache hit.

    Pitfall: RFC 9110 §8.8.2.1 forbids a ``Last-Modified`` later than the response's ``Date``;
    clamp a file's mtime to the current time before formatting it.

    Raises ``ValueError`` outside years 1..9999, which the four-digit year cannot express.

    >>> format_http_date(784111777.25)
    'Sun, 06 Nov 1994 08:49:37 GMT'
    """
    # `//` floors negative timestamps correctly, where int() would round toward zero.
    return _format_second(int(timestamp // 1))


@lru_cache(maxsize=_CACHE_SIZE)
def _format_second(second: int) -> str:
    if not _MIN_TIMESTAMP <= second <= _MAX_TIMESTAMP:
        raise ValueError(f"timestamp {second} is outside the years an HTTP-date can express")
    t = time.gmtime(second)
    return (
        f"{_DAY_NAMES[t.tm_wday]}, {t.tm_mday:02d} {_MONTH_NAMES[t.tm_mon - 1]} {t.tm_year:04d} "
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT"
    )


def parse_http_date(value: str, *, now: float | None = None) -> int | None:
    """Parse an HTTP-date in any of its three forms; return whole seconds since the epoch.

    Returns ``None`` for anything that is not exactly one HTTP-date, so callers can follow
    RFC 9110 and ignore the header. Spaces and tabs around the value (OWS) are allowed.

    *now* (seconds since the epoch, default: the current time) is only consulted for the
    obsolete RFC 850 form, whose two-digit year is placed in the century that makes it no more
    than 50 years in the future (RFC 9110 §5.6.7), at year granularity.

    >>> parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT")
    784111777
    >>> parse_http_date("Sun Nov  6 08:49:37 1994")
    784111777
    >>> parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT", now=1.7e9)
    784111777
    >>> parse_http_date("06 Nov 1994") is None
    True
    """
    value = value.strip(" \t")
    # One check makes every later isdigit() mean ASCII 0-9 (str.isdigit also accepts "²", "٣").
    if not value.isascii():
        return None
    length = len(value)
    if length == _LEN_IMF_FIXDATE and value[3] == ",":
        return _parse_imf_fixdate(value)
    if length == _LEN_ASCTIME and value[3] == " ":
        return _parse_asctime(value)
    return _parse_rfc850(value, now)


@lru_cache(maxsize=_CACHE_SIZE)
def _parse_imf_fixdate(s: str) -> int | None:
    # "Sun, 06 Nov 1994 08:49:37 GMT"
    #  0123456789012345678901234567 8
    if s[4] != " " or s[7] != " " or s[11] != " " or s[16] != " " or s[25:] != " GMT":
        return None
    if s[:3] not in _DAY_NAMES_SET:
        return None
    return _to_timestamp(s[12:16], _MONTHS.get(s[8:11], 0), s[5:7], s[17:25])


def _parse_asctime(s: str) -> int | None:
    # "Sun Nov  6 08:49:37 1994" (day is "SP DIGIT" or "2DIGIT")
    #  012345678901234567890123
    if s[7] != " " or s[10] != " " or s[19] != " " or s[:3] not in _DAY_NAMES_SET:
        return None
    day = s[9] if s[8] == " " else s[8:10]
    return _to_timestamp(s[20:24], _MONTHS.get(s[4:7], 0), day, s[11:19])


def _parse_rfc850(s: str, now: float | None) -> int | None:
    # "Sunday, 06-Nov-94 08:49:37 GMT"; the tail after the comma is fixed-width:
    # " 06-Nov-94 08:49:37 GMT"
    #  01234567890123456789012
    name, comma, tail = s.partition(",")
    if (
        not comma
        or len(tail) != _LEN_RFC850_TAIL
        or tail[0] != " "
        or tail[3] != "-"
        or tail[7] != "-"
        or tail[10] != " "
        or tail[19:] != " GMT"
        or name not in _DAY_NAMES_LONG
    ):
        return None
    two_digit_year = tail[8:10]
    if not two_digit_year.isdigit():
        return None
    this_year = time.gmtime(time.time() if now is None else now).tm_year
    year = this_year - this_year % 100 + int(two_digit_year)
    if year > this_year + _RFC850_FUTURE_YEARS:
        year -= 100
    return _to_timestamp(str(year), _MONTHS.get(tail[4:7], 0), tail[1:3], tail[11:19])


def _to_timestamp(year: str, month: int, day: str, hms: str) -> int | None:
    """Seconds since the epoch, or None; *month* is 1-12 or 0 for "not a month name"."""
    # "08:49:37"
    #  01234567
    if hms[2] != ":" or hms[5] != ":" or not month:
        return None
    hour, minute, second = hms[:2], hms[3:5], hms[6:]
    # Callers checked isascii(), so isdigit() here means 0-9 only; one call checks all fields.
    if not (year + day + hour + minute + second).isdigit():
        return None
    h, m, sec = int(hour), int(minute), int(second)
    if h > 23 or m > 59 or sec > 60:  # 60: a leap second (RFC 9110 §5.6.7 grammar)
        return None
    try:
        days = date(int(year), month, int(day)).toordinal() - _EPOCH_ORDINAL
    except ValueError:  # day 0, 30 Feb, 29 Feb in a common year, year 0
        return None
    return days * _SECONDS_PER_DAY + h * 3600 + m * 60 + sec
