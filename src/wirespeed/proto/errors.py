"""The small error vocabulary of the HTTP layer.

Every failure the protocol layer detects becomes a :class:`ProtocolError` carrying the status the
client should see and a short, client-safe reason. The connection glue translates it into a
plain-text error response (``HTTP/1.1 <status>`` plus the reason) and, when ``close`` is set, a
lingering close, because after a framing error the byte stream can no longer be trusted. Details for
operators (the parser's own message, offsets) go to ``detail`` and only ever reach the log.
"""

from __future__ import annotations

__all__ = ["ProtocolError"]


class ProtocolError(Exception):
    """A request the server refuses, with the status and reason to answer it with.

    ``status`` is the HTTP status code for the client (400, 408, 413, 414, 431, 501, 505 ...).
    ``reason`` is one short line that is safe to show to anyone. ``close`` says whether the
    connection must be closed after the answer (true for anything that breaks framing). ``detail``
    is for the log only.
    """

    __slots__ = ("close", "detail", "reason", "status")

    def __init__(self, status: int, reason: str, *, close: bool = True, detail: str = "") -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason
        self.close = close
        self.detail = detail
