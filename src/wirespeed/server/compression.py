"""Response compression in the server: where :mod:`wirespeed.codec.compress` decides, applied.

Theory of operation
-------------------
The connection asks :class:`Compression` once per response that could be compressed; the codec
module decides (coding, level, reason) from the request's ``Accept-Encoding``, the content type,
the size and a sample, and this module turns the decision into bytes and header fields:

* **Bodies** (:meth:`Compression.body`): a complete ``Response`` body of at least
  :data:`~wirespeed.codec.compress.MIN_SIZE` bytes with status 200 and no ``Content-Encoding`` of
  its own. Compressed in place on the event loop: zstd-1, the usual choice, runs at ~700 MB/s
  here, so a 1 MiB body costs ~1.5 ms. The new Content-Length is the compressed length; an
  ``ETag`` the handler set becomes the variant's own (``variant_etag``), since the bytes differ.
* **Streams** (:meth:`Compression.stream`): decided on the first chunk (the sample), then every
  chunk is compressed and flushed on its own, so a live stream stays live; the body goes chunked
  (a declared ``content_length`` no longer holds).
* **Static files** (:meth:`Compression.file_variant`): files of a compressible type up to
  :data:`VARIANT_MAX_FILE` bytes, when no fresh precompressed sibling was found and the request
  has no ``Range`` (byte offsets always address the identity bytes, as with nginx). The variant is
  compressed once and kept in a :class:`VariantCache` keyed by the file's identity (device,
  inode, size, mtime, ctime) and the coding, so it is served like a precompressed sibling:
  with its own ETag, conditionals, and ``Vary``. Larger files go identity by sendfile: compress
  them ahead of time (``.zst``/``.br``/``.gz`` siblings), as nginx's ``gzip_static`` expects.

Every response whose representation depends on ``Accept-Encoding`` carries ``Vary:
Accept-Encoding``, identity ones included, so a shared cache never hands a compressed body to a
client that cannot read it. Bodies below ``MIN_SIZE`` are never compressed, so they never vary
and skip all of this (the small-response hot path pays one length comparison). The decision's
reason is logged at DEBUG (logger ``wirespeed.compress``). The codecs are calibrated by the first
response that may be compressed, not at start-up (see :class:`Compression`).
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Sequence

from wirespeed.codec.compress import (
    MIN_SIZE,
    CompressionPolicy,
    Decision,
    StreamCompressor,
    choose_compression,
    compress,
    stream_compressor,
    variant_etag,
)

__all__ = ["VARIANT_MAX_FILE", "Compression", "FileReader", "VariantCache"]

log = logging.getLogger("wirespeed.compress")

# Static files up to this size get a cached compressed variant. Compressing happens once per
# file version on the event loop: 1 MiB at zstd-1 (~700 MB/s here) is ~1.5 ms, a pause other
# connections can absorb; a larger file would stall them for longer each time it changes.
VARIANT_MAX_FILE = 1024 * 1024
# Compressed variants kept in memory per worker. Arbitrary: a site's text assets (HTML, CSS, JS,
# JSON) compressed 5-10x fit easily; the least recently used go first.
VARIANT_CACHE_BYTES = 32 * 1024 * 1024

_VARY = (b"Vary", b"Accept-Encoding")
_SAMPLE = 4096  # what choose_compression reads of a sample (codec.compress.SAMPLE_SIZE)

FileKey = tuple[int, int, int, int, int, str]


class VariantCache:
    """Compressed variants of files, bounded in total bytes (least recently used out first)."""

    def __init__(self, max_bytes: int = VARIANT_CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self.size = 0
        self._entries: OrderedDict[FileKey, bytes] = OrderedDict()

    @staticmethod
    def key(st: os.stat_result, coding: str) -> FileKey:
        """Identity of one version of a file, and the coding of its variant."""
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, coding)

    def get(self, key: FileKey) -> bytes | None:
        data = self._entries.get(key)
        if data is not None:
            self._entries.move_to_end(key)
        return data

    def put(self, key: FileKey, data: bytes) -> None:
        if len(data) > self.max_bytes:
            return
        old = self._entries.pop(key, None)
        if old is not None:
            self.size -= len(old)
        self._entries[key] = data
        self.size += len(data)
        while self.size > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self.size -= len(evicted)

    def __len__(self) -> int:
        return len(self._entries)


class Compression:
    """One server's compression: its policy (link rate) and its cache of file variants."""

    def __init__(self, link_rate: float = 1e9, *, variants: VariantCache | None = None) -> None:
        self.policy = CompressionPolicy(link_rate=link_rate)
        self.variants = variants if variants is not None else VariantCache()
        # The codecs are measured (codec.compress.calibration, ~0.1 s once per process) by the
        # first decision, not here: measuring leaves ~3 MiB of codec state in the process
        # (measured with /proc/self/status), which a worker that never compresses should not
        # carry (the lab's idle-RSS figure). The first compressible response pays the 0.1 s.

    def decide(
        self,
        accept: bytes | None,
        content_type: str | None,
        size: int | None,
        sample: bytes | memoryview | None,
        content_encoding: bytes | None = None,
    ) -> Decision:
        decision = choose_compression(
            None if accept is None else accept.decode("latin-1"),
            content_type,
            size,
            content_encoding=None if content_encoding is None else content_encoding.decode(),
            sample=sample,
            policy=self.policy,
        )
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s (%s, %s bytes)", decision.reason, content_type, size)
        return decision

    def body(
        self,
        accept: bytes | None,
        content_type: str | None,
        body: bytes,
        headers: Sequence[tuple[bytes, bytes]],
    ) -> tuple[bytes, list[tuple[bytes, bytes]], bool]:
        """``(body, headers, acceptable)`` for a complete 200 body of at least MIN_SIZE bytes.

        ``acceptable`` False means the client refused identity and nothing fits: answer 406.
        """
        encoding = _field(headers, b"content-encoding")
        view = memoryview(body)[:_SAMPLE]
        decision = self.decide(accept, content_type, len(body), view, encoding)
        view.release()
        fields = list(headers)
        if not decision.acceptable:
            return body, fields, False
        if decision.vary:
            fields.append(_VARY)
        coding = decision.coding
        if coding is None:
            return body, fields, True
        fields.append((b"Content-Encoding", coding.encode("ascii")))
        for i, (name, value) in enumerate(fields):
            if name.lower() == b"etag":
                etag = variant_etag(value.decode("latin-1"), coding)
                fields[i] = (name, etag.encode("latin-1"))
        return compress(body, coding, decision.level), fields, True

    def stream(
        self,
        accept: bytes | None,
        content_type: str | None,
        first: bytes | None,
        headers: Sequence[tuple[bytes, bytes]],
    ) -> tuple[StreamCompressor | None, list[tuple[bytes, bytes]], bool]:
        """``(compressor or None, headers, acceptable)`` for a stream whose first chunk is
        ``first`` (the sample; None when there is none, e.g. for HEAD). The caller sends
        ``compressor.compress(chunk)`` per chunk and ``compressor.finish()`` at the end."""
        encoding = _field(headers, b"content-encoding")
        sample = None if first is None else first[:_SAMPLE]
        decision = self.decide(accept, content_type, None, sample, encoding)
        fields = list(headers)
        if not decision.acceptable:
            return None, fields, False
        if decision.vary:
            fields.append(_VARY)
        if decision.coding is None:
            return None, fields, True
        fields.append((b"Content-Encoding", decision.coding.encode("ascii")))
        fields = [(n, v) for n, v in fields if n.lower() != b"etag"]  # not this representation
        return stream_compressor(decision.coding, decision.level), fields, True

    def file_variant(
        self, accept: bytes | None, content_type: str, st: os.stat_result, read: FileReader
    ) -> tuple[str | None, bytes | None, bool]:
        """``(coding, variant bytes, vary)`` for a whole static file, or ``(None, None, vary)``
        to send it as it is. ``read()`` returns the file's bytes (called on a cache miss)."""
        size = st.st_size
        if size < MIN_SIZE or size > VARIANT_MAX_FILE:
            return None, None, False  # never compressed at this size: does not vary
        decision = self.decide(accept, content_type, size, None)
        coding = decision.coding
        if coding is None or not decision.acceptable:
            # A refused identity still gets the file: 406 for a static file helps nobody, and
            # RFC 9110 §12.5.3 lets a server disregard the header rather than refuse.
            return None, None, decision.vary
        key = VariantCache.key(st, coding)
        data = self.variants.get(key)
        if data is None:
            raw = read()
            if raw is None:
                return None, None, decision.vary
            data = compress(raw, coding, decision.level)
            if len(data) >= size:
                data = b""  # remembered as "does not pay": this version is sent as it is
            self.variants.put(key, data)
        if not data:
            return None, None, True
        return coding, data, True


def _field(headers: Sequence[tuple[bytes, bytes]], lower_name: bytes) -> bytes | None:
    """The first value of a response header field the handler set, or None."""
    for name, value in headers:
        if name.lower() == lower_name:
            return value
    return None


class FileReader:
    """Reads a whole file once (see :meth:`Compression.file_variant`)."""

    __slots__ = ("fd", "size")

    def __init__(self, fd: int, size: int) -> None:
        self.fd = fd
        self.size = size

    def __call__(self) -> bytes | None:
        data = os.pread(self.fd, self.size, 0)
        return data if len(data) == self.size else None  # shrank meanwhile: send identity
