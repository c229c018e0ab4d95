"""More Accept-Encoding rows: qvalue grammar edges and odd spacing (RFC 9110 §12.4.2, §12.5.3).

``tests/test_negotiate.py`` holds the RFC examples; these rows pin the corners of the qvalue
grammar (``qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] )``) and of the list
syntax that real clients and fuzzers send.
"""

from __future__ import annotations

import pytest

from wirespeed.codec.negotiate import NOT_ACCEPTABLE, choose_coding, parse_accept_encoding

OFFERED = ("zstd", "br", "gzip")


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        pytest.param("gzip;q=1.000", {"gzip": 1.0}, id="three-zero-decimals"),
        pytest.param("gzip;q=1.001", {"gzip": 0.0}, id="above-one-is-invalid"),
        pytest.param("gzip;q=0.001", {"gzip": 0.001}, id="smallest-positive"),
        pytest.param("gzip;q=0.0001", {"gzip": 0.0}, id="four-decimals-invalid"),
        pytest.param("gzip;q=.5", {"gzip": 0.0}, id="no-leading-digit"),
        pytest.param("gzip;q=", {"gzip": 0.0}, id="empty-qvalue"),
        pytest.param("gzip;q=-0", {"gzip": 0.0}, id="sign-invalid"),
        pytest.param("gzip;q=0.5e1", {"gzip": 0.0}, id="exponent-invalid"),
        pytest.param("gzip;Q=0.5", {"gzip": 0.5}, id="param-name-case-insensitive"),
        pytest.param("gzip ; q=0.5", {"gzip": 0.5}, id="ows-around-semicolon"),
        pytest.param("\tgzip;q=0.5\t,\tbr", {"gzip": 0.5, "br": 1.0}, id="tabs"),
        pytest.param("gzip;level=9;q=0.3", {"gzip": 0.3}, id="other-params-ignored"),
        pytest.param("x-gzip;q=0.2, gzip;q=0.8", {"gzip": 0.8}, id="alias-merges-most-permissive"),
        pytest.param("gzip,", {"gzip": 1.0}, id="trailing-comma"),
    ],
)
def test_parse(header: str, expected: dict[str, float]) -> None:
    assert parse_accept_encoding(header) == expected


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        pytest.param("*;q=0.5, gzip;q=0", "zstd", id="star-covers-unnamed-only"),
        pytest.param("identity;q=0.5, *;q=0", None, id="identity-named-above-star"),
        pytest.param("gzip;q=0.5, identity;q=0.5", "gzip", id="tie-with-identity-goes-to-coding"),
        pytest.param("gzip, *;q=0", "gzip", id="star-q0-refuses-identity-but-gzip-fits"),
        pytest.param("deflate, identity;q=0", NOT_ACCEPTABLE, id="only-unoffered-coding"),
        pytest.param("br;q=0.001, gzip;q=0.002", "gzip", id="tiny-weights-still-order"),
        pytest.param("ZSTD;Q=1, BR", "zstd", id="all-caps"),
    ],
)
def test_choose(header: str, expected: str | None) -> None:
    assert choose_coding(header, OFFERED) == expected
