"""Adaptive content coding: which coding and level pays for this response, and the codecs (pure).

Theory of operation
-------------------
Compression is a trade: CPU time now against bytes on the wire. The server calls
:func:`choose_compression` once per response; it answers a :class:`Decision` (coding, level and a
human-readable reason for logs and the lab) and the server then compresses with :func:`compress`
(bodies) or :func:`stream_compressor` (streams, flushed per chunk).

**Negotiation** is :mod:`wirespeed.codec.negotiate` (RFC 9110 §12.5.3), re-exported here. The
adaptive choice only ever picks among the codings the client weighs *highest* (its q-values are
a preference the server honours; among equal weights the server is free to choose), and never
compresses when the client prefers identity. ``deflate`` is a candidate only when the client
accepts nothing better: old clients disagreed on whether HTTP "deflate" is zlib-wrapped (it is,
RFC 9110 §8.4.1.2) and gzip costs the same. When identity is refused (``identity;q=0``,
``*;q=0``) and a coding fits, that coding is used whatever the cost; when nothing fits the
decision says 406.

**Skip rules**, cheapest first; each answers identity without looking at the body:

1. the body already has a ``Content-Encoding`` (never encode twice);
2. the media type is already compressed: ``video/*``, ``audio/*``, ``image/*`` except SVG (and
   BMP/ICO, which are sniffed), archives (zip and ``+zip`` types, gzip, zstd, 7z, rar, bzip2, xz,
   lz4), woff/woff2 fonts. Their entropy is ~8 bits/byte (measured: a 640x360 H.264 mp4 from
   ffmpeg's testsrc compresses to 0.98-1.00 with zstd-1), so compression only burns CPU;
3. the body is smaller than :data:`MIN_SIZE` (1400 bytes): a response that fits one TCP segment
   (1500-byte Ethernet MTU minus 40-60 bytes of IP/TCP headers) still takes one packet after
   compression, so the saving removes no packet and no round trip. Go's ``gziphandler`` uses 1400
   for the same reason; nginx's ``gzip_min_length`` defaults to 20 and is commonly set to 1000+;
4. the client prefers identity (no ``Accept-Encoding``, or identity weighed highest).

**Sniffing** (types that are neither known-compressible like ``text/*``/JSON/XML/JS/SVG nor known
compressed, e.g. ``application/octet-stream``): the first bytes are matched against the magic
numbers of compressed formats (:func:`sniff`; brotli has no magic number and cannot be sniffed),
then the entropy of a sample (the first :data:`SAMPLE_SIZE` bytes) is estimated. Bodies of
unknown type without a sample are not compressed.

**Entropy estimate.** The estimate is the *compressed size of the sample* with the fastest codec
(the "probe": zstd-1, else gzip-1), in bits per input byte: an upper bound on the sample's
entropy rate. An order-0 Shannon histogram was measured as the alternative and rejected: in
CPython ``Counter`` over 4 KiB costs ~105 us against ~9.5 us for zstd-1 on the same bytes (AMD
EPYC, this repo's machine), and order-0 misjudges structured data both ways (a tar of text has
H0 = 4.4 bits/byte but compresses to 0.69; an ELF binary H0 = 4.9 compresses to 0.59). Above
:data:`MAX_ENTROPY_BITS` (7.6 bits/byte, i.e. the sample saves under 5%) the body is skipped: the
4 KiB estimate itself is only good to about +-5 points of saving (measured: JSON 4 KiB sample
saves 77%, the whole 300 KiB body 82%), so a smaller predicted gain is noise. The probe is also
the ratio estimate (below), so it runs for known text types too, from 64 KiB (and for streams):
under that size the probe (~10 us) costs about what compressing a mislabelled incompressible
body would waste, and the calibration prior picks the same level for real text.

**Cost model.** With ``n`` body bytes, a link of ``L`` bytes/s (:attr:`CompressionPolicy.link_rate`
is in bits/s, default 1 Gbit/s, the share of the link one response can expect), and for a
candidate coding/level ``c`` its calibrated input throughput ``v_c`` (bytes/s), fixed per-call cost
``k_c`` (s) and space saving ``s_c`` (1 - compressed/original)::

    T_identity = n / L
    T_c        = (k_c + n / v_c) / A  +  n * (1 - s_c * g) / L

where ``A`` is the number of times the result will be sent (``amortize``: 1 for a dynamic body,
more for a cached compressed variant of a static file) and ``g`` scales the calibrated saving to
this body: ``g = s_probe(sample) / s_probe(reference)``, the probe's saving on the sample over its
saving on 4 KiB slices of the calibration corpus (the same sample size, so the small-window
penalty cancels). ``s_c * g`` is capped at 0.999. Without a sample ``g = 1``. A stream of unknown
length is costed as 1 MiB (setup cost negligible; only the per-byte rates matter).

Every option whose ``T`` is within :data:`TOLERANCE` (5%) of the smallest counts as a tie, and
the tie goes to the option that uses the least CPU: identity first, then the fastest level. So
compression is never chosen when it is expected to be slower than sending the bytes as they
are, nor when it wins by less than the model's own error. That error was measured: on the
calibration corpus zstd-3 saves 0.6 points more than zstd-1, on the benchmark's log text 2
points *less* (and at half the speed); picking the strictly smallest estimate chose zstd-3 at
100 Mbit/s and lost 15% against zstd-1 (``scripts/bench_compress.py``).

The model is serial (compress, then send), as the issue's acceptance metric is; a pipelined
stream would overlap the two, which makes the model conservative. CPU spent compressing is also
CPU not serving other connections: on a busy server pass the per-connection share of the link,
not the NIC rate.

Consequences on this machine (calibration: zstd-1 ~750 MB/s saving 78%): zstd-1 breaks even at
``L = s * v`` = ~585 MB/s = 4.7 Gbit/s. At 10 Gbit/s no codec pays and the answer is identity
without even sampling (the precheck: even a perfect ratio cannot win when ``1/v_c >= 1/L`` for
every candidate). At 1 Gbit/s and 100 Mbit/s zstd-1 wins on text (a point of saving on 256 KiB
is worth 0.2 ms at 100 Mbit/s; zstd-6 costs 1.4 ms more CPU for about one point); stronger
levels start to pay around 10 Mbit/s, and zstd-19/br-11 only for cached variants (``amortize``).

**Calibration** (:func:`calibrate`) compresses a deterministic 32 KiB corpus (JSON records, HTML,
an access log: what a web server mostly compresses) once per process with each codec and level
of :data:`LEVELS`, keeping the fastest of a few runs (noise only ever adds time), in ~0.11 s.
It runs lazily on the first decision, so a server should call :func:`calibration` at start-up.
Tests and the lab inject a fixed :class:`Calibration` through the policy for determinism.

**Hot path.** Everything that depends only on (Accept-Encoding, Content-Type, policy,
calibration) is computed once into a plan and cached: the ready-made skip decisions (type,
client preference, CPU slower than link) and the candidates, reduced to their Pareto front of
(setup, speed, saving). Measured per call (``scripts/bench_compress.py``): 0.3 us for a skip the
plan decides, ~5 us for a costed decision without a probe, ~14 us with the 4 KiB probe.

**Codecs** sit behind one import point: ``zstandard`` and ``brotli`` are optional (without them
zstd and br are simply not offered, :data:`AVAILABLE`); gzip and deflate come from ``zlib``,
always present. zstd levels stop at 19 because RFC 9659 caps the window of the HTTP zstd
coding at 8 MiB (level 19 uses window_log 23 = 8 MiB; 20-22 exceed it and browsers refuse the
frame).
"""

from __future__ import annotations

import importlib
import importlib.util
import random
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import cache, lru_cache, partial
from types import ModuleType
from typing import Any, Final, Protocol

from wirespeed.codec.negotiate import NOT_ACCEPTABLE, choose_coding, parse_accept_encoding
from wirespeed.proto.etag import is_weak

__all__ = [
    "AVAILABLE",
    "DEFAULT_POLICY",
    "LEVELS",
    "MAX_ENTROPY_BITS",
    "MIN_SIZE",
    "NOT_ACCEPTABLE",
    "SAMPLE_SIZE",
    "TOLERANCE",
    "Calibration",
    "CodecCost",
    "CompressionPolicy",
    "Decision",
    "StreamCompressor",
    "calibrate",
    "calibration",
    "calibration_corpus",
    "choose_coding",
    "choose_compression",
    "compress",
    "entropy_bits",
    "parse_accept_encoding",
    "sniff",
    "stream_compressor",
    "variant_etag",
]

# -- the one import point for optional codecs ----------------------------------------------


def _installed(name: str) -> bool:
    # find_spec does not import: the codec libraries load on first use, so a process that never
    # compresses does not carry them (~0.5 MiB of RSS, measured with /proc/self/status).
    if name in sys.modules:  # imported already, or blocked with None
        return sys.modules[name] is not None
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


@cache
def _module(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(name)
    except ImportError:  # exercised in a subprocess by the tests
        return None


def _zstd() -> Any:
    return _module("zstandard")


def _brotli() -> Any:
    return _module("brotli")


#: Codings this install can produce, best ratio first (the server's preference on ties).
AVAILABLE: Final[tuple[str, ...]] = tuple(
    name
    for name, present in (
        ("zstd", _installed("zstandard")),
        ("br", _installed("brotli")),
        ("gzip", True),
        ("deflate", True),
    )
    if present
)

#: Levels the adaptive choice considers (and calibrates). zstd 1/3/6/9 and br 1/4/5 cover the
#: fast-to-strong range measured in the module docstring; zstd-19 and br-11 run at ~4 and ~1
#: MB/s, so they only win for cached static variants (``amortize`` > 1). gzip 1 (nginx's default
#: gzip_comp_level) and 6 (zlib's default) serve clients without zstd/br. deflate mirrors gzip.
LEVELS: Final[Mapping[str, tuple[int, ...]]] = {
    "zstd": (1, 3, 6, 9, 19),
    "br": (1, 4, 5, 11),
    "gzip": (1, 6),
    "deflate": (1, 6),
}

# Valid level ranges per coding: zstd stops at 19 (RFC 9659 window cap, module docstring),
# brotli qualities are 0-11, zlib levels 0-9.
_LEVEL_RANGE: Final[Mapping[str, range]] = {
    "zstd": range(1, 20),
    "br": range(12),
    "gzip": range(10),
    "deflate": range(10),
}

#: Bodies smaller than this are sent as they are: one TCP segment either way (module docstring).
MIN_SIZE: Final = 1400
#: Bytes of the body's start used to sniff and estimate the ratio: one page, enough for zstd-1
#: to find repeats in text (4 KiB saves within ~5 points of the whole body, measured above).
SAMPLE_SIZE: Final = 4096
#: Estimated times within this fraction of the best are ties, won by the least CPU (identity
#: first): the saving differences between levels (0.5-3 points) are the size of the model's
#: error on unseen text (module docstring), and CPU not spent serves other connections.
TOLERANCE: Final = 0.05
#: Above this probe-estimated entropy (bits/byte) the body is not compressed: under 5% saving.
MAX_ENTROPY_BITS: Final = 7.6
# Samples shorter than this say little about the body (zstd's 9-13-byte frame overhead alone is
# several % of them): below it the calibration prior is used instead. Arbitrary, 4 cache lines.
_MIN_SAMPLE: Final = 256
# Known-text bodies smaller than this are not probed: the probe (~10 us for 4 KiB) costs about
# what compressing a mislabelled incompressible body of that size would waste (zstd-1 runs at
# ~2 GB/s on random bytes: 8 us for 16 KiB), and the calibration prior picks the same level for
# text (scripts/bench_compress.py). From 64 KiB the probe is under 1/16 of compressing the body.
_PROBE_MIN_SIZE: Final = 16 * SAMPLE_SIZE
# Saving estimates are capped: no codec removes all the bytes (arbitrary, 1000:1).
_MAX_SAVING: Final = 0.999
# A stream of unknown length is costed as this many bytes (1 MiB: large enough that per-call
# setup costs vanish, which is the point; arbitrary beyond that).
_STREAM_SIZE: Final = 1 << 20
# Plans cached per (Accept-Encoding, Content-Type, policy, calibration): browsers send a handful
# of Accept-Encoding values and a site serves tens of types; the bound stops a hostile client
# from growing it forever (arbitrary, cleared wholesale when reached).
_PLAN_CACHE_MAX: Final = 4096


# -- codecs: one-shot ------------------------------------------------------------------------

_local = threading.local()  # zstd compressors are reusable but not thread-safe: one per thread


def _zstd_compressor(level: int) -> Any:  # a zstandard.ZstdCompressor
    cache: dict[int, Any] | None = getattr(_local, "zstd", None)
    if cache is None:
        cache = _local.zstd = {}
    cctx = cache.get(level)
    if cctx is None:
        cctx = cache[level] = _zstd().ZstdCompressor(level=level)
    return cctx


def _check(coding: str, level: int) -> None:
    if coding not in AVAILABLE:
        if coding in _LEVEL_RANGE:
            raise ValueError(f"coding {coding!r} is not available (its library is not installed)")
        raise ValueError(f"unknown coding {coding!r}")
    if level not in _LEVEL_RANGE[coding]:
        raise ValueError(f"level {level} out of range for {coding!r}")


def compress(data: bytes | memoryview, coding: str, level: int) -> bytes:
    """Compress a whole body with ``coding`` (zstd, br, gzip or deflate) at ``level``.

    The output is exactly what goes on the wire with ``Content-Encoding: <coding>``: a zstd frame
    with the content size in its header, a brotli stream, a gzip member (RFC 1952), or a zlib
    stream for ``deflate`` (RFC 1950, as RFC 9110 §8.4.1.2 defines HTTP deflate). ``ValueError``
    for an unknown or unavailable coding or a level outside its range (zstd 1-19, br 0-11,
    gzip/deflate 0-9).

    >>> import gzip
    >>> gzip.decompress(compress(b"hello " * 100, "gzip", 6)) == b"hello " * 100
    True
    """
    _check(coding, level)
    if coding == "zstd":
        out: bytes = _zstd_compressor(level).compress(data)
        return out
    if coding == "br":
        out = _brotli().compress(bytes(data), quality=level)
        return out
    # gzip: wbits 16+15 writes the gzip wrapper; deflate: 15 writes the zlib wrapper (RFC 1950).
    co = zlib.compressobj(level, zlib.DEFLATED, 31 if coding == "gzip" else 15)
    return co.compress(data) + co.flush()


# -- codecs: streaming -------------------------------------------------------------------------


class StreamCompressor(Protocol):
    """Compresses a stream chunk by chunk; every chunk's output is flushed.

    :meth:`compress` returns bytes that, appended to everything returned before, let the client
    decode *all* input given so far: a live stream (server-sent events, logs, a chat) stays live.
    The price is a few bytes per flush (zlib's sync marker is 4-5, zstd's block header 3) and a
    worse ratio on tiny chunks, so batch small messages before compressing if you can.
    :meth:`finish` ends the stream (trailer, checksum); calling either afterwards raises
    ``ValueError``.
    """

    def compress(self, chunk: bytes | memoryview) -> bytes:
        """The compressed, flushed bytes for ``chunk`` (``b""`` for an empty chunk)."""
        ...

    def finish(self) -> bytes:
        """The last bytes of the stream; the stream is closed afterwards."""
        ...


class _ZlibStream:
    __slots__ = ("_co", "_done")

    def __init__(self, level: int, wbits: int) -> None:
        self._co = zlib.compressobj(level, zlib.DEFLATED, wbits)
        self._done = False

    def compress(self, chunk: bytes | memoryview) -> bytes:
        if self._done:
            raise ValueError("stream already finished")
        if not chunk:
            return b""  # a flush with no input would still emit the 5-byte sync marker
        return self._co.compress(chunk) + self._co.flush(zlib.Z_SYNC_FLUSH)

    def finish(self) -> bytes:
        if self._done:
            raise ValueError("stream already finished")
        self._done = True
        return self._co.flush(zlib.Z_FINISH)


class _ZstdStream:
    __slots__ = ("_co", "_done")

    def __init__(self, level: int) -> None:
        # A compressobj borrows its compressor's context, so each stream gets its own compressor.
        self._co = _zstd().ZstdCompressor(level=level).compressobj()
        self._done = False

    def compress(self, chunk: bytes | memoryview) -> bytes:
        if self._done:
            raise ValueError("stream already finished")
        if not chunk:
            return b""
        out: bytes = self._co.compress(chunk) + self._co.flush(_zstd().COMPRESSOBJ_FLUSH_BLOCK)
        return out

    def finish(self) -> bytes:
        if self._done:
            raise ValueError("stream already finished")
        self._done = True
        out: bytes = self._co.flush()
        return out


class _BrotliStream:
    __slots__ = ("_co", "_done")

    def __init__(self, level: int) -> None:
        self._co = _brotli().Compressor(quality=level)
        self._done = False

    def compress(self, chunk: bytes | memoryview) -> bytes:
        if self._done:
            raise ValueError("stream already finished")
        if not chunk:
            return b""
        out: bytes = self._co.process(bytes(chunk)) + self._co.flush()
        return out

    def finish(self) -> bytes:
        if self._done:
            raise ValueError("stream already finished")
        self._done = True
        out: bytes = self._co.finish()
        return out


def stream_compressor(coding: str, level: int) -> StreamCompressor:
    """A :class:`StreamCompressor` for ``coding`` at ``level`` (same rules as :func:`compress`).

    Each chunk's output is flushed so the client can decode everything sent so far; send it as
    one chunk of the chunked body (skip it when empty), and send :meth:`~StreamCompressor.finish`
    before the terminating zero-length chunk.

    >>> import zlib
    >>> s = stream_compressor("gzip", 1)
    >>> d = zlib.decompressobj(31)
    >>> d.decompress(s.compress(b"tick 1\\n"))  # decodable at once: the stream stays live
    b'tick 1\\n'
    >>> d.decompress(s.finish()), d.eof
    (b'', True)
    """
    _check(coding, level)
    if coding == "zstd":
        return _ZstdStream(level)
    if coding == "br":
        return _BrotliStream(level)
    return _ZlibStream(level, 31 if coding == "gzip" else 15)


# -- ETags -------------------------------------------------------------------------------------


def variant_etag(etag: str, coding: str) -> str:
    """The entity tag of the ``coding`` variant of a representation tagged ``etag``.

    A compressed body is a different representation and must not share the identity tag (RFC
    9110 §8.8.3.3); the tag gets the coding as a suffix inside the quotes, the scheme
    :func:`wirespeed.proto.etag.make_etag` uses for precompressed siblings, so a file's on-the-fly
    zstd variant and its ``.zst`` sibling carry the same tag (``make_etag(s, m, "zstd") ==
    variant_etag(make_etag(s, m), "zstd")``). A weak tag stays weak. ``ValueError`` if ``etag`` is
    not a quoted entity tag.

    >>> variant_etag('"1234-abc"', "zstd")
    '"1234-abc-zstd"'
    >>> variant_etag('W/"v1"', "br")
    'W/"v1-br"'
    """
    weak = is_weak(etag)
    body = etag[2:] if weak else etag
    if len(body) < 2 or body[0] != '"' or body[-1] != '"' or '"' in body[1:-1]:
        raise ValueError(f"not an entity tag: {etag!r}")
    return f'{"W/" if weak else ""}{body[:-1]}-{coding}"'


# -- sniffing ----------------------------------------------------------------------------------

# (offset, magic, name) of compressed formats. Sources: each format's spec or file(1)'s magic.
_MAGIC: Final[tuple[tuple[int, bytes, str], ...]] = (
    (0, b"\x1f\x8b", "gzip"),  # RFC 1952 §2.3.1
    (0, b"\x28\xb5\x2f\xfd", "zstd"),  # RFC 8878 §3.1.1
    (0, b"PK\x03\x04", "zip"),  # also docx/xlsx/jar/apk/epub
    (0, b"PK\x05\x06", "zip"),  # empty archive
    (0, b"\x89PNG\r\n\x1a\n", "png"),
    (0, b"\xff\xd8\xff", "jpeg"),
    (0, b"GIF87a", "gif"),
    (0, b"GIF89a", "gif"),
    (4, b"ftyp", "mp4"),  # ISO BMFF: mp4, mov, m4a, heic, avif
    (0, b"\x1a\x45\xdf\xa3", "matroska"),  # EBML: mkv, webm
    (0, b"OggS", "ogg"),
    (0, b"fLaC", "flac"),
    (0, b"ID3", "mp3"),
    (0, b"\xfd7zXZ\x00", "xz"),
    (0, b"BZh", "bzip2"),
    (0, b"7z\xbc\xaf\x27\x1c", "7z"),
    (0, b"Rar!\x1a\x07", "rar"),
    (0, b"\x04\x22\x4d\x18", "lz4"),
    (0, b"wOF2", "woff2"),
    (0, b"wOFF", "woff"),
)


def sniff(sample: bytes | memoryview) -> str | None:
    """The compressed format ``sample`` starts with (``"gzip"``, ``"mp4"``, ...), or None.

    Only magic numbers of formats that are already compressed are recognised (brotli has none).
    WebP is a RIFF container (``RIFF....WEBP``); other RIFF files (WAV, AVI) are not reported.

    >>> sniff(b"\\x1f\\x8b\\x08\\x00rest")
    'gzip'
    >>> sniff(b"\\x00\\x00\\x00\\x18ftypmp42") , sniff(b'{"json": 1}')
    ('mp4', None)
    """
    head = bytes(sample[:16])
    for offset, magic, name in _MAGIC:
        if head.startswith(magic, offset):
            return name
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "webp"
    return None


def _probe_size(sample: bytes | memoryview, probe: tuple[str, int]) -> int:
    return len(compress(sample, *probe))


def entropy_bits(sample: bytes | memoryview) -> float:
    """Estimated entropy of ``sample`` in bits per byte, from its compressed size (0 to ~8.1).

    The sample (use the first :data:`SAMPLE_SIZE` bytes) is compressed with the fastest available
    codec; 8 x compressed/original bounds the entropy rate from above, and counts repeats an
    order-0 histogram misses (module docstring). Random bytes give slightly over 8, text 1.5-2.5.

    >>> entropy_bits(b"abc" * 1000) < 1.0
    True
    """
    if not sample:
        return 0.0
    return 8.0 * _probe_size(sample, _PROBE) / len(sample)


# -- media types -------------------------------------------------------------------------------

_COMPRESSIBLE, _COMPRESSED, _UNKNOWN = "compressible", "compressed", "unknown"

_COMPRESSIBLE_TYPES: Final = frozenset(
    {
        "application/json",
        "application/javascript",
        "application/x-javascript",
        "application/ecmascript",
        "application/xml",
        "application/x-ndjson",
        "application/wasm",  # machine code compresses like the ELF measured above (0.59)
        "application/rtf",
        "application/x-sh",
        "application/vnd.ms-fontobject",
        "application/x-font-ttf",
        "font/ttf",
        "font/otf",
        "image/svg+xml",
    }
)
_COMPRESSED_TYPES: Final = frozenset(
    {
        "application/zip",
        "application/gzip",
        "application/x-gzip",
        "application/zstd",
        "application/x-7z-compressed",
        "application/x-rar-compressed",
        "application/vnd.rar",
        "application/x-bzip",
        "application/x-bzip2",
        "application/x-xz",
        "application/x-lzma",
        "application/x-lz4",
        "application/x-brotli",
        "application/java-archive",
        "application/vnd.android.package-archive",
        "application/font-woff",
        "font/woff",
        "font/woff2",
    }
)
# Uncompressed image formats: sniffed like unknown types rather than skipped with other images.
_SNIFFED_IMAGES: Final = frozenset({"image/bmp", "image/x-icon", "image/vnd.microsoft.icon"})


def _classify(media_type: str) -> str:
    if media_type in _COMPRESSIBLE_TYPES:
        return _COMPRESSIBLE
    if media_type in _SNIFFED_IMAGES:
        return _UNKNOWN
    if media_type in _COMPRESSED_TYPES:
        return _COMPRESSED
    top, _, sub = media_type.partition("/")
    if top == "text" or sub.endswith(("+json", "+xml")):
        return _COMPRESSIBLE
    if top in ("video", "audio", "image") or sub.endswith("+zip") or "openxmlformats" in sub:
        return _COMPRESSED
    return _UNKNOWN


# -- calibration -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CodecCost:
    """Measured cost of one coding at one level on the calibration corpus.

    ``speed`` is input bytes per second, ``saving`` is ``1 - compressed/original``, ``setup`` the
    seconds one call costs beyond the bytes (context set-up, headers; measured on an empty input).
    """

    speed: float
    saving: float
    setup: float


@dataclass(frozen=True, eq=False)
class Calibration:
    """Per-(coding, level) costs on this CPU, plus the probe's reference saving.

    ``reference_saving`` is the probe's saving on :data:`SAMPLE_SIZE` slices of the corpus (the
    denominator of the ratio scaling in the module docstring). Build one by hand to make
    decisions deterministic in tests::

        Calibration({("zstd", 1): CodecCost(500e6, 0.8, 5e-6)}, probe=("zstd", 1),
                    reference_saving=0.75)

    Compared and hashed by identity (it keys the decision cache).
    """

    costs: Mapping[tuple[str, int], CodecCost]
    probe: tuple[str, int]
    reference_saving: float
    seconds: float = 0.0  #: how long measuring took (0 for an injected table)

    def __post_init__(self) -> None:
        if not 0.0 < self.reference_saving <= 1.0:
            raise ValueError(f"reference_saving must be in (0, 1], not {self.reference_saving}")


# The fastest codec available, used to probe samples: measured fastest in the module docstring.
_PROBE: Final[tuple[str, int]] = ("zstd", 1) if "zstd" in AVAILABLE else ("gzip", 1)

_WORDS: Final = (
    *("account", "order", "price", "status", "user", "region", "error", "warning", "info"),
    *("alpha", "beta", "gamma", "delta", "item", "cart", "checkout", "shipping", "payment"),
    *("invoice", "session", "token", "request", "response", "latency", "cache"),
)


def calibration_corpus(size: int = 32 * 1024, seed: int = 4) -> bytes:
    """The deterministic text the calibration measures: JSON records, HTML and an access log.

    One third each (by generated bytes), built from a seeded RNG so every process on every
    machine measures the same bytes. Roughly what a web server compresses; not a benchmark corpus.
    """
    rnd = random.Random(seed)
    third = size // 3

    def fill(target: int, make: Callable[[], str]) -> list[str]:
        out, total = [], 0
        while total < target:
            item = make()
            out.append(item)
            total += len(item)
        return out

    def record() -> str:  # JSON: a list of records, like an API response
        return (
            f'{{"id":{rnd.randrange(10**7)},"user":"{rnd.choice(_WORDS)}{rnd.randrange(1000)}",'
            f'"price":{rnd.randrange(10**5) / 100},"tags":["{rnd.choice(_WORDS)}",'
            f'"{rnd.choice(_WORDS)}"],"active":{"true" if rnd.random() < 0.5 else "false"}}}'
        )

    def item() -> str:  # HTML: a listing page
        word = rnd.choice(_WORDS)
        return (
            f'<li class="item" data-id="{rnd.randrange(10**6)}"><a href="/{word}/'
            f'{rnd.randrange(10**4)}">{word.title()} {rnd.choice(_WORDS)}</a>'
            f'<span class="price">{rnd.randrange(10**4) / 100}</span></li>\n'
        )

    def line() -> str:  # an nginx "combined" access log
        return (
            f"10.{rnd.randrange(256)}.{rnd.randrange(256)}.{rnd.randrange(256)} - - "
            f"[26/Nov/2026:15:{rnd.randrange(60):02d}:{rnd.randrange(60):02d} +0000] "
            f'"GET /api/{rnd.choice(_WORDS)}/{rnd.randrange(10**6)} HTTP/1.1" '
            f'{rnd.choice((200, 200, 200, 304, 404))} {rnd.randrange(10**5)} "-" "Mozilla/5.0"\n'
        )

    parts = [
        "[" + ",".join(fill(third, record)) + "]",
        '<!doctype html><html><head><title>Shop</title></head><body><ul class="items">',
        "".join(fill(third, item)) + "</ul></body></html>",
        "".join(fill(size - 2 * third, line)),
    ]
    return "".join(parts).encode()[:size]


def _fastest(fn: Callable[[], object], budget: float, min_runs: int = 2) -> float:
    """Fastest run of ``fn``: at least ``min_runs``, then until ``budget`` s is spent (at most 7,
    arbitrary). One run is enough when it alone took ten budgets: a long run averages its own
    noise, and repeating br-11 would double the calibration time.
    """
    best = float("inf")
    spent = 0.0
    for i in range(max(min_runs, 7)):
        start = time.perf_counter()
        fn()
        took = time.perf_counter() - start
        best = min(best, took)
        spent += took
        if i + 1 >= min_runs and spent > budget:
            break
        if i == 0 and took > 10 * budget > 0:
            break
    return best


def calibrate(levels: Mapping[str, Iterable[int]] | None = None) -> Calibration:
    """Measure every available coding at every level of ``levels`` (default :data:`LEVELS`).

    Takes ~0.11 s here (most of it zstd-19 and br-11; drop them from ``levels`` to go faster). The
    result is what :func:`calibration` caches; call this directly only to re-measure.
    """
    start = time.perf_counter()
    corpus = calibration_corpus()
    costs: dict[tuple[str, int], CodecCost] = {}
    for coding, coding_levels in (levels or LEVELS).items():
        if coding not in AVAILABLE:
            continue
        for level in coding_levels:
            size = len(compress(corpus, coding, level))
            # Fastest of a few runs within ~3 ms each (arbitrary: enough for stable minima).
            took = _fastest(partial(compress, corpus, coding, level), 0.003)
            setup = _fastest(partial(compress, b"", coding, level), 0.0, min_runs=5)
            costs[coding, level] = CodecCost(
                speed=len(corpus) / max(took - setup, 1e-9),
                saving=1.0 - size / len(corpus),
                setup=setup,
            )
    slices = [corpus[i : i + SAMPLE_SIZE] for i in range(0, len(corpus), SAMPLE_SIZE)]
    reference = 1.0 - sum(_probe_size(s, _PROBE) for s in slices) / len(corpus)
    return Calibration(costs, _PROBE, reference, time.perf_counter() - start)


_calibration: Calibration | None = None
_calibration_lock = threading.Lock()


def calibration() -> Calibration:
    """This process's calibration, measured on first use (:func:`calibrate`) and then cached.

    Call it once at start-up (each worker process) so the first response does not pay for it.
    """
    global _calibration
    if _calibration is None:
        with _calibration_lock:
            if _calibration is None:
                _calibration = calibrate()
    return _calibration


# -- the decision --------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class CompressionPolicy:
    """What the adaptive choice optimises for. Hashed by identity: keep one per server.

    * ``link_rate``: bits/s one response can expect (default 1 Gbit/s, the issue's target);
    * ``min_size``: smaller bodies are never compressed (:data:`MIN_SIZE`);
    * ``max_entropy``: bits/byte above which a sample means "incompressible"
      (:data:`MAX_ENTROPY_BITS`);
    * ``codings``: what the server is willing to produce, best first (default :data:`AVAILABLE`);
    * ``amortize``: how many times one compression will be sent (1 for dynamic bodies; e.g. 100
      for a cached static variant, which lets zstd-19/br-11 win);
    * ``tolerance``: estimates this close to the best count as ties, won by the option using
      the least CPU (identity first) (:data:`TOLERANCE`);
    * ``calibration``: a fixed :class:`Calibration` (tests, the lab) or None for the measured one.
    """

    link_rate: float = 1e9
    min_size: int = MIN_SIZE
    max_entropy: float = MAX_ENTROPY_BITS
    codings: tuple[str, ...] = AVAILABLE
    amortize: float = 1.0
    tolerance: float = TOLERANCE
    calibration: Calibration | None = None

    def __post_init__(self) -> None:
        if self.link_rate <= 0 or self.amortize <= 0 or self.tolerance < 0:
            raise ValueError("link_rate and amortize must be > 0, tolerance >= 0")
        unknown = set(self.codings) - set(AVAILABLE)
        if unknown:
            raise ValueError(f"codings not available here: {sorted(unknown)}")


DEFAULT_POLICY: Final = CompressionPolicy()


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with one response body.

    ``coding`` is the ``Content-Encoding`` to apply (None: send as it is) at ``level``.
    ``acceptable`` is False when the client refused identity and no coding fits: answer 406.
    ``vary`` says whether the answer depended on ``Accept-Encoding`` (then send
    ``Vary: Accept-Encoding``, on identity responses too, or caches would serve the wrong variant).
    ``reason`` is for logs and the lab, e.g. ``"zstd-3: est 0.31 ms vs identity 0.84 ms"``.
    """

    coding: str | None
    level: int
    reason: str
    vary: bool = True
    acceptable: bool = True


@dataclass(frozen=True, slots=True)
class _Candidate:
    coding: str
    level: int
    setup: float  # seconds per call, already divided by amortize
    per_byte: float  # compress seconds per input byte, already divided by amortize
    saving: float


@dataclass(frozen=True, slots=True)
class _Plan:
    """Everything about a decision that does not depend on the body."""

    fixed: Decision | None  # the answer whatever the body (skips, 406, cpu-bound)
    candidates: tuple[_Candidate, ...]
    identity_ok: bool
    sniff: bool  # unknown media type: magic numbers and entropy decide
    too_small: Decision
    no_sample: Decision


_SKIP_ENCODED: Final = Decision(None, 0, "skip: already content-encoded", vary=False)
_plans: dict[tuple[str | None, str | None, CompressionPolicy, Calibration], _Plan] = {}


def _tier(accept_encoding: str, codings: tuple[str, ...]) -> tuple[list[str], bool]:
    """The offered codings the client weighs highest (server order) and whether identity is OK.

    Mirrors :func:`choose_coding`: its answer is always the first of the tier, or identity.
    """
    weights = parse_accept_encoding(accept_encoding)
    star = weights.get("*")
    qs = {c: weights.get(c, star if star is not None else 0.0) for c in codings}
    explicit = weights.get("identity", star)
    identity_ok = explicit is None or explicit > 0
    best_q = max(qs.values(), default=0.0)
    if best_q <= 0.0 or (explicit is not None and explicit > best_q):
        return [], identity_ok
    tier = [c for c in codings if qs[c] == best_q]
    if len(tier) > 1 and "deflate" in tier:
        tier.remove("deflate")  # only when nothing better is accepted (module docstring)
    return tier, identity_ok


def _dominates(a: _Candidate, b: _Candidate) -> bool:
    """Whether ``a`` is never slower than ``b`` for any body and link (and not ``b`` itself).

    Scaling the saving by the sample (module docstring) keeps the order of savings, so a
    dominated candidate can be dropped once per plan: ~11 candidates become ~6, and the decision
    loop runs over the Pareto front of (setup, speed, saving) only.
    """
    return (
        a is not b
        and a.setup <= b.setup
        and a.per_byte <= b.per_byte
        and a.saving >= b.saving
        and (a.setup, a.per_byte, a.saving) != (b.setup, b.per_byte, b.saving)
    )


def _plan(
    accept_encoding: str | None,
    content_type: str | None,
    policy: CompressionPolicy,
    cal: Calibration,
) -> _Plan:
    media_type = (content_type or "").partition(";")[0].strip().lower()
    kind = _classify(media_type) if media_type else _UNKNOWN
    link = policy.link_rate / 8.0  # bytes/s
    tier: list[str] = []
    identity_ok = True
    if accept_encoding is not None:
        measured = {coding for coding, _ in cal.costs}
        offered = tuple(c for c in policy.codings if c in measured)
        tier, identity_ok = _tier(accept_encoding, offered)
    every = [
        _Candidate(
            coding,
            level,
            cost.setup / policy.amortize,
            1.0 / (cost.speed * policy.amortize),
            cost.saving,
        )
        for coding in tier
        for (c, level), cost in cal.costs.items()
        if c == coding
    ]
    candidates = tuple(c for c in every if not any(_dominates(d, c) for d in every))
    vary = kind != _COMPRESSED
    too_small = Decision(None, 0, f"skip: too small (< {policy.min_size} bytes)", vary=vary)
    no_sample = Decision(None, 0, "skip: unknown type and no sample to sniff", vary=vary)
    fixed: Decision | None = None
    if not identity_ok:
        if not candidates:
            fixed = Decision(
                None, 0, "406: identity refused, no acceptable coding", acceptable=False
            )
        # else: forced to compress, whatever the body (decided per call, cheapest coding).
    elif not candidates:
        why = "no Accept-Encoding" if accept_encoding is None else "client prefers identity"
        fixed = Decision(None, 0, f"skip: {why}", vary=vary)
    elif kind == _COMPRESSED:
        fixed = Decision(None, 0, f"skip: already compressed ({media_type})", vary=False)
    else:
        fastest = min(candidates, key=lambda c: c.per_byte)
        if fastest.per_byte >= 1.0 / link:
            # Even a perfect ratio cannot win: compressing n bytes takes longer than sending them.
            fixed = Decision(
                None,
                0,
                f"skip: CPU slower than link ({fastest.coding}-{fastest.level} "
                f"{1e-6 / fastest.per_byte:.0f} MB/s <= {link / 1e6:.0f} MB/s)",
                vary=vary,
            )
    return _Plan(fixed, candidates, identity_ok, kind == _UNKNOWN, too_small, no_sample)


@lru_cache(maxsize=256)  # one entry per content type in use
def _without_accept(content_type: str | None) -> Decision:
    media_type = (content_type or "").partition(";")[0].strip().lower()
    kind = _classify(media_type) if media_type else _UNKNOWN
    # Vary even so, unless the type is never compressed: other clients may get another coding.
    return Decision(None, 0, "skip: no Accept-Encoding", vary=kind != _COMPRESSED)


def choose_compression(
    accept_encoding: str | None,
    content_type: str | None,
    size: int | None,
    *,
    content_encoding: str | None = None,
    sample: bytes | memoryview | None = None,
    policy: CompressionPolicy = DEFAULT_POLICY,
) -> Decision:
    """Decide whether and how to compress one response body (module docstring: the model).

    Arguments: the request's ``Accept-Encoding`` value (None if absent); the response's
    ``Content-Type`` (parameters ignored, None if unknown); ``size``, the body length, or None for
    a stream of unknown length; ``content_encoding``, the response's own ``Content-Encoding`` if
    the handler set one (then the answer is always identity); ``sample``, the body's first bytes
    (up to :data:`SAMPLE_SIZE` are read; for a stream, its first chunk).

    Observable behaviour:

    * the coding is always one the client weighs highest, never one it refused, and never
      ``deflate`` when it accepts something better;
    * identity whenever compressing is not expected to beat sending as-is by the policy's
      tolerance, unless the client refused identity: then the cheapest acceptable coding, or
      ``acceptable=False`` (answer 406) when there is none;
    * without a sample, text types are costed from the calibration and unknown types are not
      compressed; with one, unknown types are sniffed, and bodies of any type from 64 KiB (or
      streams) whose sample looks incompressible are not compressed;
    * the first call measures the calibration (~0.1 s) unless the policy carries one: call
      :func:`calibration` at start-up.

    Cost: 0.3 us when the plan cached for (header, type, policy) already decides, ~5 us for a
    costed decision, ~14 us with the probe compression of the sample.

    >>> d = choose_compression("gzip, br", "text/html", 200_000, sample=b"<p>hi</p>" * 500)
    >>> d.coding in ("br", "gzip"), d.vary
    (True, True)
    >>> choose_compression("gzip", "video/mp4", 10**7).reason
    'skip: already compressed (video/mp4)'
    >>> choose_compression("identity;q=0", "text/html", 10**6).acceptable  # nothing fits: 406
    False
    """
    if content_encoding and content_encoding.strip().lower() != "identity":
        return _SKIP_ENCODED
    if accept_encoding is None:
        # Nothing to negotiate: identity, decided by the type alone, so without measuring the
        # codecs (a server whose clients never ask for compression never calibrates).
        return _without_accept(content_type)
    cal = policy.calibration or _calibration or calibration()
    key = (accept_encoding, content_type, policy, cal)
    plan = _plans.get(key)
    if plan is None:
        if len(_plans) >= _PLAN_CACHE_MAX:
            _plans.clear()
        plan = _plans[key] = _plan(accept_encoding, content_type, policy, cal)
    if plan.fixed is not None:
        return plan.fixed
    forced = not plan.identity_ok
    if not forced and size is not None and size < policy.min_size:
        return plan.too_small

    scale = 1.0
    if (
        sample is not None
        and len(sample) >= _MIN_SAMPLE
        and (plan.sniff or size is None or size >= _PROBE_MIN_SIZE)
    ):
        head = sample[:SAMPLE_SIZE]
        if plan.sniff and not forced:
            found = sniff(head)
            if found is not None:
                return Decision(None, 0, f"skip: already compressed (sniffed {found})")
        sample_saving = 1.0 - _probe_size(head, cal.probe) / len(head)
        bits = 8.0 * (1.0 - sample_saving)
        if bits > policy.max_entropy and not forced:
            return Decision(None, 0, f"skip: high entropy {bits:.1f} bits/byte")
        scale = max(sample_saving, 0.0) / cal.reference_saving
    elif plan.sniff and not forced:
        return plan.no_sample

    n = _STREAM_SIZE if size is None else size
    link = policy.link_rate / 8.0
    identity = n / link
    # Pass 1: every candidate's estimated time, and the best of them.
    estimates: list[tuple[float, float, _Candidate]] = []
    fastest = float("inf")
    for c in plan.candidates:
        cpu = c.setup + n * c.per_byte
        t = cpu + n * (1.0 - min(c.saving * scale, _MAX_SAVING)) / link
        estimates.append((t, cpu, c))
        fastest = min(fastest, t)
    # Pass 2: the least CPU among the options within the tolerance of the best; identity (no
    # CPU at all) first, unless the client refused it.
    bound = (fastest if forced else min(fastest, identity)) * (1.0 + policy.tolerance)
    if not forced and identity <= bound:
        shown = min(estimates, key=lambda e: e[0])
        c = shown[2]
        why = "identity faster" if shown[0] >= identity else "gain within tolerance"
        return Decision(
            None,
            0,
            f"skip: {why} ({c.coding}-{c.level} est {shown[0] * 1e3:.3g} ms "
            f"vs identity {identity * 1e3:.3g} ms)",
        )
    t, _, c = min((e for e in estimates if e[0] <= bound), key=lambda e: e[1])
    if forced:
        return Decision(c.coding, c.level, f"{c.coding}-{c.level}: identity refused")
    return Decision(
        c.coding,
        c.level,
        f"{c.coding}-{c.level}: est {t * 1e3:.3g} ms vs identity {identity * 1e3:.3g} ms",
    )
