"""Content-coding negotiation: ``Accept-Encoding`` per RFC 9110 §12.5.3 (pure).

Theory of operation
-------------------
:func:`parse_accept_encoding` turns the header into ``{coding: qvalue}``. :func:`choose_coding`
picks, among the codings the server can produce *for this response*, the one the client weighs
highest, preferring the server's own order on ties (the server lists its codings from best to
worst ratio). Rules:

* no header at all: any coding is acceptable, but RFC 9110 §12.5.3 advises identity, so the
  answer is ``identity`` (``None``);
* a coding the client listed beats identity unless identity is weighed explicitly higher;
* ``*`` stands for every coding not named; ``identity`` is acceptable unless given q=0
  directly or through ``*;q=0``;
* an empty header value means "identity only";
* names are case-insensitive; ``x-gzip`` is ``gzip`` (RFC 9110 §8.4.1.3);
* an invalid q-value makes that element q=0 (ignored), never an error.

The result is a coding name, ``None`` for identity, or :data:`NOT_ACCEPTABLE` when identity is
refused and nothing offered fits (the caller then answers 406).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Final

__all__ = ["NOT_ACCEPTABLE", "choose_coding", "parse_accept_encoding"]

NOT_ACCEPTABLE: Final = "!"

_ALIASES: Final = {"x-gzip": "gzip", "x-compress": "compress"}


@lru_cache(maxsize=256)  # browsers send a handful of distinct values; parsing once each is enough
def parse_accept_encoding(value: str) -> dict[str, float]:
    """``{coding: q}`` for an ``Accept-Encoding`` value (names lowercased, aliases folded)."""
    result: dict[str, float] = {}
    for element in value.split(","):
        name, _, params = element.partition(";")
        name = name.strip().lower()
        if not name:
            continue
        name = _ALIASES.get(name, name)
        q = 1.0
        for param in params.split(";"):
            key, _, val = param.partition("=")
            if key.strip().lower() == "q":
                q = _qvalue(val.strip())
        # RFC 9110 does not say which of duplicates wins; take the most permissive.
        result[name] = max(q, result.get(name, 0.0))
    return result


def _qvalue(text: str) -> float:
    # qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] ); anything else counts as 0.
    if not text or len(text) > 5 or text[0] not in "01":
        return 0.0
    if len(text) > 1 and (text[1] != "." or (text[2:] and not text[2:].isdigit())):
        return 0.0
    try:
        q = float(text)
    except ValueError:
        return 0.0
    return q if 0.0 <= q <= 1.0 else 0.0


def choose_coding(accept_encoding: str | None, offered: Sequence[str]) -> str | None:
    """The coding to use: one of ``offered``, ``None`` for identity, or :data:`NOT_ACCEPTABLE`.

    ``offered`` lists the codings available for this response, best first (e.g. ``("zstd",
    "br", "gzip")``; it may be empty).

    >>> choose_coding("gzip, br;q=0.9", ("zstd", "br", "gzip"))
    'gzip'
    >>> choose_coding("identity;q=0", ()) == NOT_ACCEPTABLE
    True
    """
    if accept_encoding is None:
        return None
    weights = parse_accept_encoding(accept_encoding)
    star = weights.get("*")
    best: str | None = None
    best_q = 0.0
    for coding in offered:
        q = weights.get(coding, star if star is not None else 0.0)
        if q > best_q:
            best, best_q = coding, q
    explicit = weights.get("identity", star)
    # Identity is acceptable unless refused; when the client did not weigh it, any coding it
    # did list is preferred (that is why it listed it), as browsers and servers assume.
    if best is not None and (explicit is None or best_q >= explicit):
        return best
    if explicit is None or explicit > 0:
        return None
    return NOT_ACCEPTABLE
