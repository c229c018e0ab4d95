"""HTTP-date formatting and parsing (RFC 9110 §5.6.7), checked against Python's email.utils."""

from __future__ import annotations

import calendar
import doctest
import email.utils
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wirespeed.proto import httpdate
from wirespeed.proto.httpdate import format_http_date, parse_http_date

RFC_EXAMPLE = 784111777  # Sun, 06 Nov 1994 08:49:37 GMT, the example of RFC 9110 §5.6.7
NOW_2026 = calendar.timegm((2026, 6, 1, 0, 0, 0))  # a fixed "now" for two-digit years
MIN_TS = calendar.timegm((1, 1, 1, 0, 0, 0))
MAX_TS = calendar.timegm((9999, 12, 31, 23, 59, 59))

# Property tests check correctness, not speed: a per-example deadline would make them flaky
# on the shared 2-core CI machine.
NO_DEADLINE = settings(deadline=None)


def test_doctests() -> None:
    results = doctest.testmod(httpdate)
    assert results.attempted > 0
    assert results.failed == 0


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("Sun, 06 Nov 1994 08:49:37 GMT", RFC_EXAMPLE, id="rfc-imf-fixdate"),
        pytest.param("Sunday, 06-Nov-94 08:49:37 GMT", RFC_EXAMPLE, id="rfc-rfc850"),
        pytest.param("Sun Nov  6 08:49:37 1994", RFC_EXAMPLE, id="rfc-asctime"),
        pytest.param("Sun Nov 06 08:49:37 1994", RFC_EXAMPLE, id="asctime-two-digit-day"),
        pytest.param(" \tSun, 06 Nov 1994 08:49:37 GMT\t ", RFC_EXAMPLE, id="ows-around"),
        pytest.param("Thu, 01 Jan 1970 00:00:00 GMT", 0, id="epoch"),
        pytest.param("Wed, 31 Dec 1969 23:59:59 GMT", -1, id="before-epoch"),
        pytest.param("Thu, 29 Feb 2024 12:00:00 GMT", 1709208000, id="leap-day"),
        pytest.param("Wed, 25 Jun 2014 17:12:18 GMT", 1403716338, id="go-range-with-modtime"),
        pytest.param("Wed, 31 Dec 2014 23:59:60 GMT", 1420070400, id="leap-second-is-next-second"),
        pytest.param("Mon, 01 Jan 0001 00:00:00 GMT", MIN_TS, id="year-1"),
        pytest.param("Fri, 31 Dec 9999 23:59:59 GMT", MAX_TS, id="year-9999"),
        pytest.param("Mon, 06 Nov 1994 08:49:37 GMT", RFC_EXAMPLE, id="wrong-weekday-ignored"),
        # Everything below is not an HTTP-date: the header is to be ignored.
        pytest.param("", None, id="empty"),
        pytest.param("Sun, 06 Nov 1994 08:49:37 gmt", None, id="lowercase-gmt"),
        pytest.param("sun, 06 Nov 1994 08:49:37 GMT", None, id="lowercase-day"),
        pytest.param("Sun, 06 nov 1994 08:49:37 GMT", None, id="lowercase-month"),
        pytest.param("Sun, 06 Nov 1994 08:49:37 UTC", None, id="utc-not-gmt"),
        pytest.param("Sun, 06 Nov 1994 08:49:37 +0000", None, id="numeric-zone"),
        pytest.param("Sun, 6 Nov 1994 08:49:37 GMT", None, id="one-digit-day"),
        pytest.param("Sun, 06 Nov 94 08:49:37 GMT", None, id="two-digit-year-imf"),
        pytest.param("Sun, 06 Nov 1994 8:49:37 GMT", None, id="one-digit-hour"),
        pytest.param("Sun, 06 Nov 1994 08-49-37 GMT", None, id="bad-time-separator"),
        pytest.param("Sun, 06 Nov 1994 24:00:00 GMT", None, id="hour-24"),
        pytest.param("Sun, 06 Nov 1994 08:60:00 GMT", None, id="minute-60"),
        pytest.param("Sun, 06 Nov 1994 08:49:61 GMT", None, id="second-61"),
        pytest.param("Fri, 30 Feb 2024 00:00:00 GMT", None, id="feb-30"),
        pytest.param("Tue, 29 Feb 2023 00:00:00 GMT", None, id="feb-29-common-year"),
        pytest.param("Sun, 00 Nov 1994 08:49:37 GMT", None, id="day-0"),
        pytest.param("Sun, 06 Nov 0000 08:49:37 GMT", None, id="year-0"),
        pytest.param("Sun, 06 Foo 1994 08:49:37 GMT", None, id="unknown-month"),
        pytest.param("Xyz, 06 Nov 1994 08:49:37 GMT", None, id="unknown-day"),
        pytest.param("Sun, +6 Nov 1994 08:49:37 GMT", None, id="sign-in-number"),
        pytest.param("Sun, \u0660\u0666 Nov 1994 08:49:37 GMT", None, id="non-ascii-digits"),
        pytest.param("Sun, 06 Nov 1994 08:49:37 GMT; length=1234", None, id="old-ie-length-suffix"),
        pytest.param(
            "Sun, 06 Nov 1994 08:49:37 GMT, Sun, 06 Nov 1994 08:49:37 GMT",
            None,
            id="list-of-dates",
        ),
        pytest.param("Sunday, 06-Nov-94 08:49:37 UTC", None, id="rfc850-utc"),
        pytest.param("Sun, 06-Nov-94 08:49:37 GMT", None, id="rfc850-short-day-name"),
        pytest.param("Sunday, 06-Nov-1994 08:49:37 GMT", None, id="rfc850-four-digit-year"),
        pytest.param("Sunday, 06-Nov-9x 08:49:37 GMT", None, id="rfc850-bad-year"),
        pytest.param("Sun Nov  6 08:49:37 94  ", None, id="asctime-two-digit-year"),
        pytest.param("Sun Nov   6 08:49:37 1994", None, id="asctime-extra-space"),
        pytest.param("1994-11-06T08:49:37Z", None, id="iso-8601"),
        pytest.param("784111777", None, id="unix-seconds"),
    ],
)
def test_parse_http_date(value: str, expected: int | None) -> None:
    assert parse_http_date(value, now=NOW_2026) == expected


@pytest.mark.parametrize(
    ("value", "year"),
    [
        # RFC 9110 §5.6.7: a two-digit year more than 50 years in the future is in the past.
        pytest.param("Sunday, 06-Nov-94 08:49:37 GMT", 1994, id="94-is-1994"),
        pytest.param("Thursday, 01-Jan-70 00:00:00 GMT", 2070, id="70-is-2070-not-1970"),
        pytest.param("Thursday, 01-Jan-26 00:00:00 GMT", 2026, id="this-year"),
        pytest.param("Thursday, 01-Jan-50 00:00:00 GMT", 2050, id="24-years-ahead-is-future"),
        pytest.param("Thursday, 01-Jan-76 00:00:00 GMT", 2076, id="50-years-ahead-is-future"),
        pytest.param("Thursday, 01-Jan-77 00:00:00 GMT", 1977, id="51-years-ahead-is-past"),
        pytest.param("Thursday, 01-Jan-00 00:00:00 GMT", 2000, id="00-is-2000"),
    ],
)
def test_rfc850_two_digit_year(value: str, year: int) -> None:
    parsed = parse_http_date(value, now=NOW_2026)
    assert parsed is not None
    assert time.gmtime(parsed).tm_year == year


def test_rfc850_uses_the_clock_by_default() -> None:
    # The current century's year 1 is always in the past and never 50 years ahead.
    this_year = time.gmtime().tm_year
    parsed = parse_http_date(f"Monday, 01-Jan-{this_year % 100:02d} 00:00:00 GMT")
    assert parsed is not None
    assert time.gmtime(parsed).tm_year == this_year


@pytest.mark.parametrize(
    ("timestamp", "expected"),
    [
        pytest.param(RFC_EXAMPLE, "Sun, 06 Nov 1994 08:49:37 GMT", id="rfc-example"),
        pytest.param(RFC_EXAMPLE + 0.999, "Sun, 06 Nov 1994 08:49:37 GMT", id="fraction-floored"),
        pytest.param(0, "Thu, 01 Jan 1970 00:00:00 GMT", id="epoch"),
        pytest.param(-0.5, "Wed, 31 Dec 1969 23:59:59 GMT", id="negative-fraction-floored"),
        pytest.param(MIN_TS, "Mon, 01 Jan 0001 00:00:00 GMT", id="year-1-zero-padded"),
        pytest.param(MAX_TS + 0.5, "Fri, 31 Dec 9999 23:59:59 GMT", id="year-9999"),
    ],
)
def test_format_http_date(timestamp: float, expected: str) -> None:
    assert format_http_date(timestamp) == expected


@pytest.mark.parametrize("timestamp", [MIN_TS - 1, MAX_TS + 1], ids=["year-0", "year-10000"])
def test_format_rejects_years_a_four_digit_year_cannot_hold(timestamp: int) -> None:
    with pytest.raises(ValueError, match="outside the years"):
        format_http_date(timestamp)


@NO_DEADLINE
@given(st.integers(MIN_TS, MAX_TS))
def test_format_matches_email_utils_and_round_trips(timestamp: int) -> None:
    formatted = format_http_date(timestamp)
    assert formatted == email.utils.formatdate(timestamp, usegmt=True)
    assert parse_http_date(formatted) == timestamp


@NO_DEADLINE
@given(st.integers(MIN_TS, MAX_TS))
def test_asctime_form_parses(timestamp: int) -> None:
    t = time.gmtime(timestamp)
    value = (
        f"{time.strftime('%a %b', t)} {t.tm_mday:2d} "
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} {t.tm_year:04d}"
    )
    assert parse_http_date(value) == timestamp


# RFC 850 dates are only unambiguous within the 100-year window around "now".
@NO_DEADLINE
@given(st.integers(NOW_2026 - 49 * 365 * 86400, NOW_2026 + 49 * 365 * 86400))
def test_rfc850_form_parses_within_its_window(timestamp: int) -> None:
    t = time.gmtime(timestamp)
    value = time.strftime("%A, %d-%b-%y %H:%M:%S GMT", t)
    assert parse_http_date(value, now=NOW_2026) == timestamp


@NO_DEADLINE
@given(st.text(max_size=40))
def test_parse_never_raises_on_arbitrary_text(value: str) -> None:
    result = parse_http_date(value, now=NOW_2026)
    assert result is None or MIN_TS <= result <= MAX_TS + 1


@NO_DEADLINE
@given(
    st.integers(MIN_TS, MAX_TS),
    st.integers(0, 28),
    st.sampled_from("0123456789 ,:-+ADGJMNOSTWaeuxyz\t"),
)
def test_one_character_off_is_rejected_or_canonical(timestamp: int, at: int, char: str) -> None:
    # Mutate one character of a valid IMF-fixdate. The parser must either reject the result or
    # have read exactly what it says: formatting the parsed time gives the same text back
    # (the weekday aside, which is not checked against the date, and a leap second).
    original = format_http_date(timestamp)
    mutated = original[:at] + char + original[at + 1 :]
    result = parse_http_date(mutated)
    if result is None:
        assert mutated != original  # the unmutated date always parses
    elif mutated[23:25] != "60":
        assert format_http_date(result)[3:] == mutated[3:]
