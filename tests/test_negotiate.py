"""Accept-Encoding negotiation (RFC 9110 §12.5.3): table rows and odd inputs."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wirespeed.codec.negotiate import NOT_ACCEPTABLE, choose_coding, parse_accept_encoding

OFFERED = ("zstd", "br", "gzip")


@pytest.mark.parametrize(
    ("header", "offered", "expected"),
    [
        pytest.param(None, OFFERED, None, id="no-header-means-identity"),
        pytest.param("", OFFERED, None, id="empty-value-identity-only"),
        pytest.param("gzip", OFFERED, "gzip", id="single"),
        pytest.param("gzip, deflate, br, zstd", OFFERED, "zstd", id="browser-order-server-prefers"),
        pytest.param("gzip, br;q=0.9", OFFERED, "gzip", id="qvalue-wins-over-server-order"),
        pytest.param("br;q=0, gzip", OFFERED, "gzip", id="q0-excludes"),
        pytest.param("*", OFFERED, "zstd", id="star-accepts-all"),
        pytest.param("*;q=0", OFFERED, NOT_ACCEPTABLE, id="star-q0-refuses-identity-too"),
        pytest.param("*;q=0, identity", OFFERED, None, id="identity-named-survives-star-q0"),
        pytest.param("identity;q=0", (), NOT_ACCEPTABLE, id="identity-refused-nothing-offered"),
        pytest.param("identity;q=0, gzip", OFFERED, "gzip", id="identity-refused-gzip-ok"),
        pytest.param("identity", OFFERED, None, id="identity-only"),
        pytest.param("identity;q=1, gzip;q=0.5", OFFERED, None, id="identity-weighed-higher"),
        pytest.param("compress, gzip", OFFERED, "gzip", id="rfc-example-1"),
        pytest.param("compress;q=0.5, gzip;q=1.0", OFFERED, "gzip", id="rfc-example-4"),
        pytest.param("gzip;q=1.0, identity; q=0.5, *;q=0", OFFERED, "gzip", id="rfc-example-5"),
        pytest.param("x-gzip", OFFERED, "gzip", id="x-gzip-alias"),
        pytest.param("GZIP", OFFERED, "gzip", id="case-insensitive"),
        pytest.param("gzip;q=2", OFFERED, None, id="invalid-qvalue-is-zero"),
        pytest.param("gzip;q=0.5x", OFFERED, None, id="garbage-qvalue-is-zero"),
        pytest.param("unknown-coding", OFFERED, None, id="unknown-only"),
        pytest.param(",,, ;q=1", OFFERED, None, id="empty-elements"),
        pytest.param("gzip", (), None, id="nothing-offered-identity-ok"),
    ],
)
def test_choose(header: str | None, offered: tuple[str, ...], expected: str | None) -> None:
    assert choose_coding(header, offered) == expected


def test_parse_keeps_most_permissive_duplicate() -> None:
    assert parse_accept_encoding("gzip;q=0, gzip;q=0.4") == {"gzip": 0.4}


@given(st.text(max_size=80))
def test_never_raises_and_answers_from_the_offer(header: str) -> None:
    result = choose_coding(header, OFFERED)
    assert result is None or result == NOT_ACCEPTABLE or result in OFFERED
