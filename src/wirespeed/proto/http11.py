"""HTTP/1.1 request reading: httptools (llhttp) plus the hygiene and limits trusted servers add.

Theory of operation
-------------------
llhttp does the byte-level work in C: request line, header syntax (no whitespace before a colon,
no bare CR, no obs-fold), Content-Length syntax and duplicates, chunk-size hex and overflow, the
CRLF after chunk data, and Transfer-Encoding + Content-Length conflicts. :class:`RequestReader`
wraps it and adds what llhttp leaves to the application, all of it from RFC 9112:

* the version must be 1.0 or 1.1 (anything else, the HTTP/2 preface included, is 505);
* Transfer-Encoding must be exactly ``chunked`` (another coding is 501, as we implement none),
  and is refused in HTTP/1.0 (§6.1: a 1.0 peer cannot have sent it meaningfully);
* Host must be present once on 1.1, and syntactically valid (§3.2);
* limits on the request target, the header block (bytes and fields), and chunk extensions.

The reader is pure: no asyncio, sockets or files. It is fed bytes (whole or one at a time, with
the same result) and calls three methods on a *sink* (the connection): ``on_request`` when a head is
complete, ``on_body`` for each piece of body, ``on_request_complete`` at the end of each message.
``on_request_complete`` is called only for requests with a body. Every refusal raises
:class:`~wirespeed.proto.errors.ProtocolError` from :meth:`RequestReader.feed`;
after one, the reader is spent and the connection must close.

Bounding the head: llhttp streams, but httptools buffers a header field until it is complete, so an
endless header line would grow memory. While a head is incomplete the reader feeds at most the
remaining head allowance at once; if the head is still incomplete after that, the answer is 431.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol

import httptools

from wirespeed.proto.errors import ProtocolError

__all__ = [
    "BODY_CHUNKED",
    "BODY_LENGTH",
    "BODY_NONE",
    "Limits",
    "RequestReader",
    "RequestSink",
    "split_target",
]

# How the request body is framed (RFC 9112 §6.3).
BODY_NONE = 0
BODY_LENGTH = 1
BODY_CHUNKED = 2

KIB = 1024
MIB = 1024 * KIB


@dataclass(frozen=True, slots=True)
class Limits:
    """Request limits. Each default carries the reason it was chosen."""

    # RFC 9112 §3: servers ought to accept request lines of at least 8000 octets; nginx's
    # large_client_header_buffers default is 8 KiB too. Longer targets get 414.
    max_target: int = 8 * KIB
    # The whole header block (target + fields). nginx accepts 4 x 8 KiB by default; Go 1 MiB.
    # 64 KiB leaves room for large cookies while bounding what one connection can pin -> 431.
    max_header_bytes: int = 64 * KIB
    # Apache's LimitRequestFields default; real browsers send 10-30 fields -> 431.
    max_header_count: int = 100
    # nginx's client_max_body_size default. Native handlers buffer bodies, so keep it modest -> 413.
    max_body: int = 1 * MIB
    # Bytes of chunk framing (size line + extensions + CRLFs) tolerated per chunk. Legitimate
    # framing is under 30 bytes; 4 KiB leaves room for extensions while stopping a client that
    # streams an endless extension, which llhttp would skip without any limit.
    max_chunk_overhead: int = 4 * KIB


class RequestSink(Protocol):
    """What a :class:`RequestReader` reports to (in practice, the connection)."""

    def on_request(
        self,
        method: str,
        target: bytes,
        version: str,
        headers: list[tuple[bytes, bytes]],
        keep_alive: bool,
        body_kind: int,
        content_length: int,
        expect_continue: bool,
    ) -> None: ...

    def on_body(self, chunk: bytes) -> None: ...

    def on_request_complete(self) -> None:
        """The body of the last request announced by ``on_request`` is complete.

        Called only for requests that have a body: one without is complete from the start.
        """


# Method names come back from llhttp as bytes; decoding each time costs more than a dict hit.
_METHODS = {
    m.encode(): m
    for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "CONNECT", "TRACE")
}

# len(b"host"), len(b"expect"), len(b"connection"), len(b"content-length"),
# len(b"transfer-encoding")
_WATCHED_LENGTHS = frozenset((4, 6, 10, 14, 17))
# Longest well-formed unknown method answered 501 rather than 400 (arbitrary: the longest
# registered method, VERSION-CONTROL, has 15 characters).
_MAX_METHOD = 24
# Content-Length digits accepted: 19 digits hold any int64, so more is padding or an attack.
_MAX_LENGTH_DIGITS = 19

# RFC 9112 §3.2 / RFC 3986 §3.2.2: Host = uri-host [ ":" port ]; uri-host is an IP-literal in
# brackets, an IPv4 address or a reg-name (unreserved / pct-encoded / sub-delims). Empty is
# allowed (a target without authority). Checked per request, so the common case is one
# bytes.translate (C speed) plus a partition; the regex only sees bracketed IPv6 literals.
_HOST_BYTES = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~%!$&'()*+,;=:[]"
_IP_LITERAL_RE = re.compile(rb"\[[0-9A-Fa-f:.]+\](?::[0-9]*)?\Z")


# Each bytes method call costs 1,000-2,500 CPU instructions in CPython 3.11 (callgrind), so
# per-request checks go through caches: the spellings of the watched names clients use, and
# Host values already validated (a server sees a handful; the cache is bounded).
_LOWER_NAMES = {
    spelled: spelled.lower()
    for name in (b"Host", b"Expect", b"Connection", b"Content-Length", b"Transfer-Encoding")
    for spelled in (name, name.lower(), name.upper())
}
_VALID_HOSTS: dict[bytes, bool] = {}
_VALID_HOSTS_MAX = 1024  # distinct valid Host values remembered (arbitrary, ~100 KB at most)


def _check_host(value: bytes) -> bool:
    ok = valid_host(value)
    if ok and len(_VALID_HOSTS) < _VALID_HOSTS_MAX:
        _VALID_HOSTS[value] = True
    return ok


def valid_host(value: bytes) -> bool:
    """True if ``value`` is a syntactically valid Host field value (RFC 9112 §3.2)."""
    if value.translate(None, _HOST_BYTES):
        return False  # a byte outside the allowed set
    if value.find(b"[") >= 0 or value.find(b"]") >= 0:  # not `in`: it raises internally
        return _IP_LITERAL_RE.match(value) is not None
    _, _, port = value.partition(b":")
    return not port or port.isdigit()


def split_target(target: bytes) -> tuple[bytes, bytes]:
    """Split a request target into (path, query), handling origin-, absolute- and asterisk-form.

    RFC 9112 §3.2: origin-form ``/path?query`` is the norm; absolute-form ``http://host/path`` must
    be accepted by servers (its authority replaces Host, which the caller handles); ``*`` is for
    OPTIONS. A fragment never belongs in a target, but is stripped if a client sends one.
    """
    if target[:1] != b"/" and target != b"*":
        # absolute-form: skip "scheme://authority"
        sep = target.find(b"://")
        if sep > 0:
            slash = target.find(b"/", sep + 3)
            q = target.find(b"?", sep + 3)
            if slash < 0 or (0 <= q < slash):
                target = b"/" + (target[q:] if q >= 0 else b"")
            else:
                target = target[slash:]
    hash_at = target.find(b"#")
    if hash_at >= 0:
        target = target[:hash_at]
    q = target.find(b"?")
    if q < 0:
        return target, b""
    return target[:q], target[q + 1 :]


class RequestReader:
    """Incremental request parser with RFC 9112 hygiene and limits.

    Feed it bytes with :meth:`feed`; it calls the sink as requests arrive. Any refusal raises
    :class:`ProtocolError`, after which the reader must not be fed again.
    """

    __slots__ = (
        "_bad_method",
        "_bad_prefix",
        "_body_kind",
        "_body_seen",
        "_chunk_headers",
        "_chunk_overhead",
        "_chunked",
        "_completions",
        "_head_left",
        "_headers",
        "_heads",
        "_in_head",
        "_limits",
        "_parser",
        "_sink",
        "_url",
        "failed_in_body",
        "mid_message",
        "upgraded",
    )

    def __init__(self, sink: RequestSink, limits: Limits | None = None) -> None:
        self._sink = sink
        self._limits = limits or Limits()
        self._parser = httptools.HttpRequestParser(self)
        self._in_head = True
        self._head_left = self._limits.max_header_bytes
        self._heads = 0  # request heads seen (for attributing the bytes of one read)
        self._completions = 0  # requests completed
        self._chunked = False  # the latest head announced a chunked body
        #: True between the first byte of a request and the end of its body.
        self.mid_message = False
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._body_kind = BODY_NONE
        self._body_seen = self._chunk_headers = self._chunk_overhead = 0
        #: After a refusal: True if it concerns the body of the latest request announced to the
        #: sink (its head was fine), False if it concerns a head that was never announced.
        self.failed_in_body = False
        #: True once a CONNECT or an accepted protocol upgrade leaves HTTP; bytes after it are not
        #: HTTP, so the connection must close after answering.
        self.upgraded = False
        # The method llhttp refused, while it is too short to say whether it is a well-formed
        # unknown method (501) or garbage (400); see _judge_method.
        self._bad_method: bytes | None = None
        self._bad_prefix = 0

    # -- feeding -------------------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Parse ``data``, calling the sink for each event. Raises :class:`ProtocolError`."""
        if self._bad_method is not None:
            self._bad_method += data
            self._judge_method()
            return
        parser = self._parser
        while data:
            if self._in_head:
                # While a head is incomplete, feed at most what is left of its allowance.
                left = self._head_left
                if len(data) > left:
                    chunk, data = data[:left], data[left:]
                else:
                    chunk, data = data, b""
            else:
                chunk, data = data, b""
            in_head = self._in_head
            heads = self._heads
            completions = self._completions
            body_before = self._body_seen
            try:
                parser.feed_data(chunk)
            except httptools.HttpParserUpgrade as exc:
                self._after_upgrade(chunk, exc, completions)
            except httptools.HttpParserInvalidMethodError:
                # What the method was decides between 501 and 400, and it may not have fully
                # arrived: judge it on this read, and on later ones if this read ends inside it.
                self.failed_in_body = False
                self.mid_message = True  # the header timeout covers a client that stalls here
                start = 0
                ended = self._completions - completions
                if ended:
                    # Requests completed earlier in this read: the refused one starts after
                    # them. Their ends are not reported, so assume bodiless heads (pipelined
                    # GETs, the only common case); a body could only misplace the 501/400 line.
                    for _ in range(ended):
                        end = chunk.find(b"\r\n\r\n", start)
                        if end < 0:
                            break
                        start = end + 4
                self._bad_method = chunk[start:].lstrip(b"\r\n")
                # Bytes of this method that earlier reads delivered (only their count matters).
                self._bad_prefix = (
                    self._limits.max_header_bytes - self._head_left if in_head and not ended else 0
                )
                self._judge_method()
                return
            except httptools.HttpParserError as exc:
                # An error after a head completed belongs to that request's body.
                self.failed_in_body = not self._in_head
                raise self._translate(exc, chunk) from None
            if self._chunked:
                self._count_chunk_framing(chunk, in_head, heads, completions, body_before)
            if self._in_head:
                if self._completions != completions:
                    # A message ended inside this chunk; where the next head began is not
                    # known, so count nothing against it: this undercounts by less than
                    # one allowance, which keeps memory bounded without false refusals.
                    self._head_left = self._limits.max_header_bytes
                elif in_head:
                    self._head_left -= len(chunk)
                    if self._head_left <= 0:
                        raise ProtocolError(431, "request header fields too large")

    def _count_chunk_framing(
        self, chunk: bytes, in_head: bool, heads: int, completions: int, body_before: int
    ) -> None:
        """Bound chunk extensions, which llhttp skips without any limit.

        The framing of a chunked body (size lines, extensions, CRLFs) is what a read held minus
        its head part and its body bytes. That is only known when the read held no other
        message; reads shared with another message are not counted, which can only undercount
        (never refuse a valid body) and is bounded by one read.
        """
        new_heads = self._heads - heads
        ended = self._completions - completions
        if new_heads > 1 or ended > 1 or (ended and self.mid_message):
            return  # more than one message in this read
        if new_heads:
            if ended and not in_head:
                return  # the end of an earlier message, then this one
            # The head ends at the first blank line (or later, if it straddled reads: the
            # estimate then only comes out low).
            head_end = chunk.find(b"\r\n\r\n")
            if head_end < 0:
                return
            framing = len(chunk) - head_end - 4 - self._body_seen
        elif in_head:
            return  # only head bytes of some message: no chunked body here
        else:
            framing = len(chunk) - (self._body_seen - body_before)
        self._chunk_overhead += framing
        # One allowance per chunk line seen (the line in progress counts once none is complete).
        allowed = max(self._chunk_headers, 1) * self._limits.max_chunk_overhead
        if self._chunk_overhead > allowed:
            self.failed_in_body = True  # the body of the latest request, even if it ended
            raise ProtocolError(400, "chunk extensions too long")

    def _after_upgrade(
        self, data: bytes, exc: httptools.HttpParserUpgrade, completions: int
    ) -> None:
        # llhttp stops after a CONNECT head or a request carrying Upgrade. We speak only
        # HTTP/1.1, so an Upgrade is declined by answering normally (RFC 9110 §7.8 lets a server
        # ignore it) and parsing continues after it. CONNECT turns the rest of the stream into a
        # tunnel we will not open: answer it, then close.
        if self._completions == completions:
            # llhttp stops right after the message it paused on; anything else is malformed.
            raise ProtocolError(400, "malformed request")
        if self.upgraded:
            return
        offset = int(exc.args[0]) if exc.args else len(data)
        rest = data[offset:]
        if rest:
            self.feed(rest)

    def _judge_method(self) -> None:
        """Raise 501 for a well-formed method llhttp does not know, 400 for anything else, or
        return to wait for more bytes while the method has not ended yet.

        llhttp stops at the first byte that no known method continues with, so what it refused
        starts with the rest of the method; the earlier bytes of it (fed in previous reads) were
        capital letters, and only their number matters here. Deciding only once the method has
        ended makes the answer the same however the request is split into reads.
        """
        data = self._bad_method
        assert data is not None
        size = 0
        for byte in data:
            if not 65 <= byte <= 90:  # A-Z: RFC 9110 allows any token, but methods are capitals
                break
            size += 1
        else:
            if self._bad_prefix + size <= _MAX_METHOD:
                return  # still inside a method that may be well-formed
        length = self._bad_prefix + size
        if size < len(data) and data[size] == 32 and 0 < length <= _MAX_METHOD:  # a space ends it
            raise ProtocolError(501, "method not implemented")
        raise ProtocolError(400, "malformed request")

    def _translate(self, exc: httptools.HttpParserError, data: bytes) -> ProtocolError:
        cause = exc.__context__
        if isinstance(cause, ProtocolError):
            return cause  # raised by one of our callbacks below
        if isinstance(exc, httptools.HttpParserCallbackError) and cause is not None:
            raise exc  # a bug in the sink, not the client's fault: let it surface
        message = str(exc)
        if "Content-Length" in message and "Transfer-Encoding" in message:
            return ProtocolError(400, "Content-Length with Transfer-Encoding", detail=message)
        if "Transfer-Encoding" in message:
            return ProtocolError(501, "transfer-coding not implemented", detail=message)
        if message.startswith(("Invalid HTTP version", "Pause on PRI")):
            return ProtocolError(505, "HTTP version not supported", detail=message)
        if isinstance(exc, httptools.HttpParserInvalidURLError):
            return ProtocolError(400, "invalid request target", detail=message)
        if "Content-Length" in message:
            return ProtocolError(400, "invalid Content-Length", detail=message)
        if "chunk" in message.lower():
            return ProtocolError(400, "invalid chunked body", detail=message)
        return ProtocolError(400, "malformed request", detail=message)

    # -- httptools callbacks (called from C inside feed_data) ------------------------------------

    def on_url(self, url: bytes) -> None:
        # The first callback of every request (leading empty lines are skipped by llhttp); the
        # target may come in fragments when it spans reads.
        self.mid_message = True
        self._url += url
        if len(self._url) > self._limits.max_target:
            raise ProtocolError(414, "request target too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        # Called once per field, so it only collects: the checks run in one pass at the end of
        # the head (memory is bounded meanwhile by feeding at most the head allowance).
        # Names keep their case; RFC 9112 §5: trailing whitespace is not part of a value (llhttp
        # drops the leading part itself). Indexing an int is far cheaper than a method call,
        # so rstrip runs only when there is something to strip.
        if value and (value[-1] == 32 or value[-1] == 9):
            value = value.rstrip(b" \t")
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        headers = self._headers
        limits = self._limits
        if len(headers) > limits.max_header_count:
            raise ProtocolError(431, "too many header fields")
        size = len(self._url)
        hosts = 0
        content_length = 0
        chunked = False
        expect = False
        close = False
        keep_alive_option = False
        # One pass over the fields; only four names need a look, and comparing lengths first
        # skips lowercasing the others.
        for name, value in headers:
            n = len(name)
            size += n + len(value) + 4
            if n not in _WATCHED_LENGTHS:
                continue
            lname = _LOWER_NAMES.get(name) or name.lower()
            if lname == b"host":
                hosts += 1
                if hosts > 1:
                    raise ProtocolError(400, "more than one Host header")
                if not _VALID_HOSTS.get(value) and not _check_host(value):
                    raise ProtocolError(400, "invalid Host header")
            elif lname == b"content-length":
                # llhttp checked: digits only, single, no overflow. Bound the length too.
                if len(value) > _MAX_LENGTH_DIGITS:
                    raise ProtocolError(400, "invalid Content-Length")
                content_length = int(value)
            elif lname == b"connection":
                # RFC 9112 §9.3: "close" wins over anything else, in any version (llhttp lets
                # "keep-alive, close" keep a 1.0 connection open).
                options = [t.strip() for t in value.lower().split(b",")]
                if b"close" in options:
                    close = True
                elif b"keep-alive" in options:
                    keep_alive_option = True
            elif lname == b"transfer-encoding":
                # Any coding but a lone "chunked" is one we do not implement (RFC 9112 §6.1:
                # 501). Several TE fields are one list, so a second field always adds a coding.
                if chunked or value.strip().lower() != b"chunked":
                    raise ProtocolError(501, "transfer-coding not implemented")
                chunked = True
            elif lname == b"expect":
                if value.strip().lower() != b"100-continue":
                    raise ProtocolError(417, "expectation not supported")
                expect = True
        if size > limits.max_header_bytes:
            raise ProtocolError(431, "request header fields too large")
        parser = self._parser
        version = parser.get_http_version()
        if version != "1.1" and version != "1.0":  # noqa: PLR1714 - two compares beat a set here
            raise ProtocolError(505, "HTTP version not supported")
        if hosts == 0 and version == "1.1":
            raise ProtocolError(400, "missing Host header")
        raw_method = parser.get_method()
        method = _METHODS.get(raw_method) or raw_method.decode("ascii")
        if chunked:
            if version == "1.0":
                # RFC 9112 §6.1: chunked in 1.0 is a framing fault; close after the answer.
                raise ProtocolError(400, "Transfer-Encoding in HTTP/1.0")
            body_kind = BODY_CHUNKED
            self._body_seen = self._chunk_headers = self._chunk_overhead = 0
            self._chunked = True
        elif content_length:
            if content_length > limits.max_body:
                raise ProtocolError(413, "request body too large")
            body_kind = BODY_LENGTH
        else:
            body_kind = BODY_NONE
        if body_kind != BODY_CHUNKED:
            self._chunked = False
        self._heads += 1
        self._body_kind = body_kind
        self._in_head = False
        self._head_left = limits.max_header_bytes
        # RFC 9112 §9.3, decided here rather than by llhttp's should_keep_alive(): one C call
        # less per request, and "close" must win over "keep-alive" in 1.0 too.
        keep_alive = not close and (version == "1.1" or keep_alive_option)
        # RFC 9110 §10.1.1: a server MUST ignore 100-continue from an HTTP/1.0 client.
        expect = expect and version == "1.1"
        if method == "CONNECT":
            self.upgraded = True
            keep_alive = False
        self._sink.on_request(
            method, self._url, version, headers, keep_alive, body_kind, content_length, expect
        )

    def on_body(self, body: bytes) -> None:
        self._body_seen += len(body)
        if self._body_kind == BODY_CHUNKED and self._body_seen > self._limits.max_body:
            raise ProtocolError(413, "request body too large")
        self._sink.on_body(body)

    def on_chunk_header(self) -> None:
        self._chunk_headers += 1

    def on_message_complete(self) -> None:
        self._in_head = True
        self.mid_message = False
        self._completions += 1
        self._url = b""
        self._headers = []
        if self._body_kind:
            self._body_kind = BODY_NONE
            self._sink.on_request_complete()
