"""Preconditions (RFC 9110 §13.2.2), If-Range (§13.1.5) and entity tags (§8.8.3).

Rows named go-* carry the cases of Go's net/http TestServeContent; rfc-* the RFC's own.
"""

from __future__ import annotations

import doctest
from types import ModuleType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wirespeed.proto import conditional, etag
from wirespeed.proto.conditional import Precondition, evaluate_preconditions, if_range_allows
from wirespeed.proto.etag import (
    is_weak,
    make_etag,
    match_etag_list,
    strong_compare,
    weak_compare,
)
from wirespeed.proto.httpdate import format_http_date

ETAG = '"1234-abc"'
MTIME = 784111777.25  # Sun, 06 Nov 1994 08:49:37.25 GMT; Last-Modified drops the .25
LAST_MODIFIED = format_http_date(MTIME)
EARLIER = format_http_date(MTIME - 2)
LATER = format_http_date(MTIME + 1)

PROCEED = Precondition.PROCEED
NOT_MODIFIED = Precondition.NOT_MODIFIED
FAILED = Precondition.PRECONDITION_FAILED

# Property tests check correctness, not speed: a per-example deadline would make them flaky
# on the shared 2-core CI machine.
NO_DEADLINE = settings(deadline=None)


@pytest.mark.parametrize("module", [conditional, etag], ids=lambda m: m.__name__)
def test_doctests(module: ModuleType) -> None:
    results = doctest.testmod(module)
    assert results.attempted > 0
    assert results.failed == 0


# --------------------------------------------------------------------------- entity tags


@pytest.mark.parametrize(
    ("a", "b", "strong", "weak"),
    [
        # The example table of RFC 9110 §8.8.3.2, row by row.
        pytest.param('W/"1"', 'W/"1"', False, True, id="rfc-weak-weak-same"),
        pytest.param('W/"1"', 'W/"2"', False, False, id="rfc-weak-weak-different"),
        pytest.param('W/"1"', '"1"', False, True, id="rfc-weak-strong-same"),
        pytest.param('"1"', '"1"', True, True, id="rfc-strong-strong-same"),
        pytest.param('"1"', '"2"', False, False, id="strong-strong-different"),
        pytest.param('"a"', '"A"', False, False, id="case-sensitive"),
        pytest.param('w/"1"', 'w/"1"', True, True, id="lowercase-w-is-not-weak"),
    ],
)
def test_etag_comparison(a: str, b: str, strong: bool, weak: bool) -> None:
    assert strong_compare(a, b) is strong
    assert strong_compare(b, a) is strong
    assert weak_compare(a, b) is weak
    assert weak_compare(b, a) is weak


def test_make_etag() -> None:
    assert make_etag(0x1234, 0xABC) == '"1234-abc"'
    assert make_etag(0, 0) == '"0-0"'  # empty file at the epoch
    assert make_etag(0x1234, 0xABC, "br") == '"1234-abc-br"'
    assert not is_weak(make_etag(1, 1))
    # One nanosecond or one byte apart are different representations.
    assert make_etag(10, 1_700_000_000_000_000_001) != make_etag(10, 1_700_000_000_000_000_000)
    assert make_etag(11, 1) != make_etag(10, 1)
    # A variant never shares its original's tag.
    assert make_etag(10, 1, "gz") != make_etag(10, 1)


@pytest.mark.parametrize("variant", ["", 'b"r', "b r", "a,b", "gzip\n", "é"])
def test_make_etag_rejects_variants_that_break_the_quoted_string(variant: str) -> None:
    with pytest.raises(ValueError, match="invalid ETag variant"):
        make_etag(1, 1, variant)


@pytest.mark.parametrize(
    ("field_value", "current", "weak", "expected"),
    [
        pytest.param("*", ETAG, False, True, id="star"),
        pytest.param(" * ", None, True, True, id="star-without-etag"),
        pytest.param('"x"', None, True, False, id="list-without-etag"),
        pytest.param(ETAG, ETAG, False, True, id="single-exact"),
        pytest.param(f'"x", {ETAG}', ETAG, False, True, id="second-in-list"),
        pytest.param(f'"x",{ETAG}', ETAG, False, True, id="list-without-space"),
        pytest.param(f'"x" ,\t{ETAG} ', ETAG, False, True, id="list-ows-and-tab"),
        pytest.param(f',, "x", , {ETAG},', ETAG, False, True, id="empty-list-elements"),
        pytest.param(f"W/{ETAG}", ETAG, False, False, id="weak-tag-strong-compare"),
        pytest.param(f"W/{ETAG}", ETAG, True, True, id="weak-tag-weak-compare"),
        pytest.param(ETAG, f"W/{ETAG}", False, False, id="weak-current-strong-compare"),
        pytest.param(f"W/{ETAG}", f"W/{ETAG}", False, False, id="weak-both-strong-compare"),
        pytest.param(f"W/{ETAG}", f"W/{ETAG}", True, True, id="weak-both-weak-compare"),
        pytest.param('"a,b"', '"a,b"', False, True, id="comma-inside-tag"),
        pytest.param('"x", "a,b"', '"a,b"', True, True, id="comma-inside-tag-in-list"),
        pytest.param('"a', '"a"', True, False, id="unterminated"),
        pytest.param(",", ETAG, True, False, id="go-if-none-match-malformed"),
        pytest.param(f"bogus, {ETAG}", ETAG, True, False, id="malformed-stops-reading"),
        pytest.param(f"{ETAG}junk", ETAG, True, True, id="tags-before-junk-count"),
        pytest.param(f'"x"junk, {ETAG}', ETAG, True, False, id="junk-after-tag-stops"),
        pytest.param(f"*, {ETAG}", ETAG, True, False, id="star-in-list-is-malformed"),
        pytest.param("", ETAG, True, False, id="empty-value"),
    ],
)
def test_match_etag_list(field_value: str, current: str | None, weak: bool, expected: bool) -> None:
    assert match_etag_list(field_value, current, weak=weak) is expected


# ------------------------------------------------------------------- preconditions


@pytest.mark.parametrize(
    ("method", "headers", "expected"),
    [
        pytest.param("GET", {}, PROCEED, id="no-conditions"),
        # Step 1: If-Match, strong comparison, 412 on failure.
        pytest.param("GET", {"if_match": "*"}, PROCEED, id="go-ifmatch-star"),
        pytest.param("GET", {"if_match": f'"Z", {ETAG}'}, PROCEED, id="go-ifmatch-matches"),
        pytest.param("GET", {"if_match": '"B"'}, FAILED, id="go-ifmatch-failed"),
        pytest.param("PUT", {"if_match": '"B"'}, FAILED, id="ifmatch-failed-put"),
        pytest.param("GET", {"if_match": f"W/{ETAG}"}, FAILED, id="ifmatch-weak-tag-fails"),
        pytest.param("GET", {"if_match": "garbage"}, FAILED, id="ifmatch-malformed-fails"),
        # Step 2: If-Unmodified-Since, only without If-Match; 1-second resolution.
        pytest.param(
            "GET", {"if_unmodified_since": LAST_MODIFIED}, PROCEED, id="go-ius-true-equal"
        ),
        pytest.param("GET", {"if_unmodified_since": LATER}, PROCEED, id="ius-later"),
        pytest.param("GET", {"if_unmodified_since": EARLIER}, FAILED, id="go-ius-false"),
        pytest.param("GET", {"if_unmodified_since": "yesterday"}, PROCEED, id="ius-invalid"),
        pytest.param(
            "GET",
            {"if_unmodified_since": f"{EARLIER}, {EARLIER}"},
            PROCEED,
            id="ius-list-of-dates-ignored",
        ),
        pytest.param(
            "GET",
            {"if_match": ETAG, "if_unmodified_since": EARLIER},
            PROCEED,
            id="ius-ignored-when-if-match-present",
        ),
        # Step 3: If-None-Match, weak comparison, 304 for GET/HEAD else 412.
        pytest.param("GET", {"if_none_match": ETAG}, NOT_MODIFIED, id="go-not-modified-etag"),
        pytest.param("HEAD", {"if_none_match": ETAG}, NOT_MODIFIED, id="inm-head"),
        pytest.param("POST", {"if_none_match": ETAG}, FAILED, id="inm-post"),
        pytest.param("PUT", {"if_none_match": "*"}, FAILED, id="inm-star-put"),
        pytest.param("GET", {"if_none_match": "*"}, NOT_MODIFIED, id="inm-star-get"),
        pytest.param("get", {"if_none_match": ETAG}, FAILED, id="methods-are-case-sensitive"),
        pytest.param(
            "GET",
            {"if_none_match": f'"baz", W/{ETAG}'},
            NOT_MODIFIED,
            id="go-not-modified-weak-in-list",
        ),
        pytest.param("GET", {"if_none_match": '"1234-ABC"'}, PROCEED, id="go-inm-mismatch"),
        pytest.param("GET", {"if_none_match": ","}, PROCEED, id="go-inm-malformed"),
        pytest.param(
            "GET",
            {"if_none_match": '"other"', "if_modified_since": LAST_MODIFIED},
            PROCEED,
            id="ims-ignored-when-inm-present",
        ),
        # Step 4: If-Modified-Since, GET/HEAD only; "at or before the date" is not modified.
        pytest.param("GET", {"if_modified_since": LAST_MODIFIED}, NOT_MODIFIED, id="go-ims-equal"),
        pytest.param("HEAD", {"if_modified_since": LAST_MODIFIED}, NOT_MODIFIED, id="ims-head"),
        pytest.param("GET", {"if_modified_since": LATER}, NOT_MODIFIED, id="ims-later"),
        pytest.param("GET", {"if_modified_since": EARLIER}, PROCEED, id="ims-earlier"),
        pytest.param("POST", {"if_modified_since": LAST_MODIFIED}, PROCEED, id="ims-post"),
        pytest.param("GET", {"if_modified_since": "0"}, PROCEED, id="ims-invalid"),
        pytest.param(
            "GET",
            {"if_modified_since": "Sunday, 06-Nov-94 08:49:37 GMT"},
            NOT_MODIFIED,
            id="ims-rfc850-form",
        ),
        # The order is the point: earlier steps win.
        pytest.param(
            "GET",
            {"if_match": '"B"', "if_none_match": ETAG},
            FAILED,
            id="order-if-match-fails-before-inm-matches",
        ),
        pytest.param(
            "GET",
            {"if_unmodified_since": EARLIER, "if_modified_since": LAST_MODIFIED},
            FAILED,
            id="order-ius-fails-before-ims-not-modified",
        ),
        pytest.param(
            "GET",
            {"if_match": ETAG, "if_none_match": ETAG},
            NOT_MODIFIED,
            id="order-if-match-passes-then-inm-matches",
        ),
        pytest.param(
            "GET",
            {"if_unmodified_since": LAST_MODIFIED, "if_modified_since": LAST_MODIFIED},
            NOT_MODIFIED,
            id="order-ius-passes-then-ims-not-modified",
        ),
        pytest.param(
            "GET",
            {"if_match": "*", "if_none_match": '"other"', "if_modified_since": LAST_MODIFIED},
            PROCEED,
            id="all-pass",
        ),
    ],
)
def test_evaluate_preconditions(
    method: str, headers: dict[str, str], expected: Precondition
) -> None:
    assert evaluate_preconditions(method, ETAG, MTIME, **headers) is expected


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        pytest.param({"if_match": "*"}, PROCEED, id="if-match-star-still-passes"),
        pytest.param({"if_match": ETAG}, FAILED, id="if-match-list-fails"),
        pytest.param({"if_none_match": "*"}, NOT_MODIFIED, id="inm-star-still-matches"),
        pytest.param({"if_none_match": ETAG}, PROCEED, id="inm-list-passes"),
    ],
)
def test_representation_without_etag(headers: dict[str, str], expected: Precondition) -> None:
    assert evaluate_preconditions("GET", None, MTIME, **headers) is expected


@pytest.mark.parametrize(
    "headers",
    [{"if_unmodified_since": EARLIER}, {"if_modified_since": LAST_MODIFIED}],
    ids=["ius", "ims"],
)
def test_dates_ignored_without_last_modified(headers: dict[str, str]) -> None:
    assert evaluate_preconditions("GET", ETAG, None, **headers) is PROCEED


def test_weak_current_etag() -> None:
    # Go's ifmatch_fails_on_weak_etag: a weak tag can satisfy If-None-Match, never If-Match.
    weak = f"W/{ETAG}"
    assert evaluate_preconditions("GET", weak, MTIME, if_match=weak) is FAILED
    assert evaluate_preconditions("GET", weak, MTIME, if_none_match=weak) is NOT_MODIFIED
    assert evaluate_preconditions("GET", weak, MTIME, if_none_match=ETAG) is NOT_MODIFIED


@pytest.mark.parametrize(
    ("mtime", "ims", "expected"),
    [
        # Last-Modified has one-second resolution; the mtime is floored to match it.
        pytest.param(100.0, 100, NOT_MODIFIED, id="whole-second"),
        pytest.param(100.999, 100, NOT_MODIFIED, id="fraction-is-same-second"),
        pytest.param(101.0, 100, PROCEED, id="next-second-is-modified"),
        pytest.param(-0.5, -1, NOT_MODIFIED, id="negative-floors-down"),
        pytest.param(-0.5, -2, PROCEED, id="negative-floors-down-modified"),
    ],
)
def test_one_second_resolution(mtime: float, ims: int, expected: Precondition) -> None:
    result = evaluate_preconditions("GET", ETAG, mtime, if_modified_since=format_http_date(ims))
    assert result is expected


@NO_DEADLINE
@given(
    st.sampled_from(["GET", "HEAD", "PUT", "POST"]),
    st.one_of(st.none(), st.sampled_from(["*", ETAG, '"B"', f"W/{ETAG}", ","])),
    st.one_of(st.none(), st.sampled_from([LAST_MODIFIED, EARLIER, LATER, "bad"])),
    st.one_of(st.none(), st.sampled_from(["*", ETAG, '"B"', f"W/{ETAG}", ","])),
    st.one_of(st.none(), st.sampled_from([LAST_MODIFIED, EARLIER, LATER, "bad"])),
)
def test_preconditions_follow_rfc_9110_section_13_2_2(
    method: str,
    if_match: str | None,
    ius: str | None,
    if_none_match: str | None,
    ims: str | None,
) -> None:
    # An independent, literal transcription of the RFC's steps over precomputed truths.
    etag_strong = {"*": True, ETAG: True, '"B"': False, f"W/{ETAG}": False, ",": False}
    etag_weak = {"*": True, ETAG: True, '"B"': False, f"W/{ETAG}": True, ",": False}
    unmodified_since = {LAST_MODIFIED: True, EARLIER: False, LATER: True, "bad": None}
    expected = PROCEED
    step_1_fails = if_match is not None and not etag_strong[if_match]
    step_2_fails = if_match is None and ius is not None and unmodified_since[ius] is False
    if step_1_fails or step_2_fails:
        expected = FAILED
    elif if_none_match is not None and etag_weak[if_none_match]:
        expected = NOT_MODIFIED if method in ("GET", "HEAD") else FAILED
    elif (
        if_none_match is None
        and ims is not None
        and method in ("GET", "HEAD")
        and unmodified_since[ims] is True
    ):
        expected = NOT_MODIFIED
    actual = evaluate_preconditions(
        method,
        ETAG,
        MTIME,
        if_match=if_match,
        if_unmodified_since=ius,
        if_none_match=if_none_match,
        if_modified_since=ims,
    )
    assert actual is expected


# ------------------------------------------------------------------------ If-Range


@pytest.mark.parametrize(
    ("if_range", "current", "mtime", "expected"),
    [
        pytest.param(None, ETAG, MTIME, True, id="absent"),
        pytest.param(ETAG, ETAG, MTIME, True, id="go-range-match"),
        pytest.param(f" {ETAG} ", ETAG, MTIME, True, id="ows-around"),
        pytest.param('"B"', ETAG, MTIME, False, id="go-range-no-match"),
        pytest.param('W/"A"', 'W/"A"', MTIME, False, id="go-range-match-weak-etag"),
        pytest.param(f"W/{ETAG}", ETAG, MTIME, False, id="weak-tag-never-matches"),
        pytest.param(ETAG, f"W/{ETAG}", MTIME, False, id="weak-current-never-matches"),
        pytest.param(ETAG, None, MTIME, False, id="tag-without-current-etag"),
        pytest.param(f'{ETAG}, "B"', ETAG, MTIME, False, id="list-is-not-a-tag"),
        pytest.param(
            "Wed, 25 Jun 2014 17:12:18 GMT", ETAG, 1403716338.0, True, id="go-range-with-modtime"
        ),
        pytest.param(
            "Wed, 25 Jun 2014 17:12:19 GMT",
            ETAG,
            1403716338.0,
            False,
            id="go-range-with-modtime-mismatch",
        ),
        pytest.param(
            "Wed, 25 Jun 2014 17:12:18 GMT",
            ETAG,
            1403716338.000000123,
            True,
            id="go-range-with-modtime-nanos",
        ),
        pytest.param(EARLIER, ETAG, MTIME, False, id="date-before-is-not-exact"),
        pytest.param(LATER, ETAG, MTIME, False, id="date-after-is-not-exact"),
        pytest.param("Sunday, 06-Nov-94 08:49:37 GMT", ETAG, MTIME, True, id="rfc850-date"),
        pytest.param(LAST_MODIFIED, ETAG, None, False, id="date-without-last-modified"),
        pytest.param("tomorrow", ETAG, MTIME, False, id="invalid-date"),
        pytest.param("", ETAG, MTIME, False, id="empty-value"),
    ],
)
def test_if_range_allows(
    if_range: str | None, current: str | None, mtime: float | None, expected: bool
) -> None:
    assert if_range_allows(if_range, current, mtime) is expected
