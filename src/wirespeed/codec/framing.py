"""Batched message framing: many small messages per write, length-prefixed, msgpack or JSON.

Theory of operation
-------------------
A stream of small messages (trades, telemetry) sent one ``write()`` each spends its time in
system calls and per-packet work, not in bytes: on loopback one ``send(2)`` costs microseconds
whatever its size. This module amortises that cost by *batching*: messages queued within a short
latency bound go out as one frame in one write.

**Frame layout.** Every frame is a fixed 6-byte header followed by the payload::

    offset  size  field
    0       4     length   uint32, big-endian: bytes of payload that follow the header
    4       1     codec    0x01 = msgpack, 0x02 = JSON (orjson); anything else is an error
    5       1     flags    bit 0 (0x01) = payload is lz4-compressed; other bits must be 0
    6       ...   payload  one msgpack array / one JSON array: the messages of the batch

When the lz4 flag is set the payload is itself ``uint32 big-endian uncompressed size`` followed by
one lz4 *block* (not the lz4 frame format: the header above already delimits it). Storing the size
lets the decoder reject a decompression bomb before it allocates, and decompress into a buffer of
exactly that size.

**Maximum frame size.** :data:`MAX_FRAME_SIZE` (1 MiB) bounds both the length field and the
uncompressed size of an lz4 payload, on both sides: the encoder refuses to build a larger frame
and the decoder rejects a header announcing one *as soon as the 6 header bytes are in*, before
buffering any of the payload. It is the memory a receiver commits per connection (one frame plus
its decompressed copy), so it must be small enough for thousands of connections; 1 MiB is about
Kafka's default ``message.max.bytes`` (1 MiB + 12) and 16 times the default batch budget, which
leaves room for the odd large message while a batch of small ones stays near 64 KiB.

**Batching rule.** :class:`FrameEncoder` encodes each message as it is added and keeps the
encodings; a frame is cut when the pending encodings reach the *byte budget*
(:data:`BYTE_BUDGET`, 64 KiB), or when the next message would push the frame past the maximum
size. :class:`Channel` adds time: a batch is written when it reaches the byte budget, when
``max_delay`` (default 1 ms) has passed since its first message was queued, on :meth:`Channel.flush`
and :meth:`Channel.close`, and before the channel waits for a paused transport (messages never
sit in the batch while the peer is behind). A timer covers producers that yield to the event
loop; ``write()`` (and so ``send()``) also compares the clock with the batch's deadline, for
producers that hold the loop between messages, where no timer can run. uvloop's timers tick in
whole milliseconds, so there a batch may leave up to 1 ms *early*, never late on that account.

**Compression** is per batch and only when it pays: payloads under :data:`LZ4_MIN_PAYLOAD` are
sent as they are, and a compressed payload is kept only if it is at least 1/8 smaller. After a
batch that did not compress, the next :data:`LZ4_BACKOFF` batches skip the attempt (a stream of
incompressible data pays the compressor's cost once in a while, not on every batch).

**Decoder output.** :class:`FrameDecoder` yields *messages*, flattened across frames. Batch
boundaries depend on timing (how many messages arrived within the latency bound) and carry no
meaning, so exposing them would invite code that depends on them.

**Errors.** Everything that goes wrong with frames raises :class:`FramingError` (a
``ValueError``): truncated stream, oversize frame, unknown codec or flags, corrupt lz4, bad
msgpack/JSON, and a message the codec cannot encode. A decoder that raised is unusable: a byte
stream has no resynchronisation point after a bad frame.

The HTTP side (:func:`framed_response`, :func:`ndjson_response`) runs a :class:`Channel` whose
"transport" is the body of a :class:`~wirespeed.StreamResponse`, so HTTP streams get the same
latency bound, byte budget and backpressure as sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import socket
import struct
import time
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol

import orjson

from wirespeed.io.flow import WriteFlow

if TYPE_CHECKING:
    from types import TracebackType

    from wirespeed.server.responses import HeaderInput, StreamResponse

__all__ = [
    "BYTE_BUDGET",
    "CODEC_JSON",
    "CODEC_MSGPACK",
    "FLAG_LZ4",
    "FRAMES_CONTENT_TYPE",
    "HEADER_SIZE",
    "MAX_DELAY",
    "MAX_FRAME_SIZE",
    "NDJSON_CONTENT_TYPE",
    "BatchEncoder",
    "Channel",
    "Codec",
    "FrameDecoder",
    "FrameEncoder",
    "FramingError",
    "NdjsonEncoder",
    "framed_response",
    "ndjson_response",
    "receive_messages",
]


def _optional(name: str) -> Any:
    # The one import point for the optional accelerators (the ``codecs`` extra).
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


_msgpack: Any = _optional("msgpack")
_monotonic = time.monotonic  # a global read is cheaper than time.monotonic in Channel.write
_lz4_block: Any = _optional("lz4.block")

Codec = Literal["msgpack", "json"]

CODEC_MSGPACK: Final = 0x01
CODEC_JSON: Final = 0x02
_CODEC_IDS: Final[dict[str, int]] = {"msgpack": CODEC_MSGPACK, "json": CODEC_JSON}
FLAG_LZ4: Final = 0x01

_HEADER: Final = struct.Struct(">IBB")
HEADER_SIZE: Final = _HEADER.size  # 6
_USIZE: Final = struct.Struct(">I")

# See "Maximum frame size" above: per-connection memory bound, Kafka's message.max.bytes.
MAX_FRAME_SIZE: Final = 1 << 20
# 64 KiB per batch: the largest segment the kernel hands to the NIC in one go (GSO/TSO limit) and
# asyncio's default write-buffer high-water mark, so one batch is one large send. Measured with
# scripts/bench_framing.py (100-byte messages, uvloop): 16 KiB gave 2.1 M msg/s, 64 KiB 2.7 M,
# 256 KiB 2.7 M with a p99 added latency near the 1 ms bound; the gain stops at 64 KiB.
BYTE_BUDGET: Final = 64 * 1024
# 1 ms (issue #4's default): small next to a WAN round trip, long enough that a producer of
# 100,000 msg/s still puts about 100 messages in each write.
MAX_DELAY: Final = 0.001
# Below 128 bytes a 50% saving is under 64 bytes, about the TCP/IP headers of one packet: not
# worth the receiver's decompression call.
LZ4_MIN_PAYLOAD: Final = 128
# Keep a compressed payload only if it saves at least 1/8 (12.5%) of the bytes (arbitrary: a
# meaningful margin over the 4-byte size field and the receiver's decompression cost).
_LZ4_MIN_SAVING_SHIFT: Final = 3
# After an incompressible batch, skip this many before trying again (arbitrary: bounds the
# wasted compression on incompressible streams to about 1 batch in 9).
LZ4_BACKOFF: Final = 8
# Bytes of msgpack array header the payload may need (0xdd + uint32 count).
_MSGPACK_ARRAY_OVERHEAD: Final = 5

FRAMES_CONTENT_TYPE: Final = "application/vnd.wirespeed.frames"
NDJSON_CONTENT_TYPE: Final = "application/x-ndjson"


class FramingError(ValueError):
    """A frame could not be built or read: truncated, oversize, unknown codec, corrupt data.

    ``messages`` holds the messages of the frames a :meth:`FrameDecoder.feed` call completed
    before it met the bad one (they were valid; the stream after them is not).
    """

    def __init__(self, message: str, messages: list[Any] | None = None) -> None:
        super().__init__(message)
        self.messages: list[Any] = messages if messages is not None else []


# -- encoding ------------------------------------------------------------------------------------

# What msgpack's and orjson's encoders raise for a value they cannot represent.
_ENCODE_ERRORS: Final = (TypeError, ValueError, OverflowError)


def _msgpack_array_header(count: int) -> bytes:
    if count < 16:
        return bytes((0x90 | count,))
    if count <= 0xFFFF:
        return b"\xdc" + count.to_bytes(2, "big")
    return b"\xdd" + count.to_bytes(4, "big")


class BatchEncoder(Protocol):
    """The wire format of a :class:`Channel`: :class:`FrameEncoder` or :class:`NdjsonEncoder`.

    ``packer`` encodes one message (raising ``TypeError``/``ValueError``/``OverflowError`` when it
    cannot); :meth:`frame` turns a batch of such encodings into the bytes to write. A channel
    cuts a batch at ``byte_budget`` and keeps its encodings, plus one byte each, within
    ``max_frame_size - 5`` (room for the array header).
    """

    @property
    def codec(self) -> str: ...

    @property
    def byte_budget(self) -> int: ...

    @property
    def max_frame_size(self) -> int: ...

    @property
    def packer(self) -> Callable[[Any], bytes]: ...

    def frame(self, items: list[bytes]) -> bytes: ...


class FrameEncoder:
    """Encode messages into frames: one batch at a time (:meth:`encode`) or batching (:meth:`add`).

    ``codec`` is ``"msgpack"`` (binary-safe, the default; needs the ``msgpack`` package) or
    ``"json"`` (orjson). ``lz4=True`` compresses a batch when that pays (see the module notes;
    needs the ``lz4`` package). ``byte_budget`` is the batch size at which :meth:`add` cuts a
    frame; ``max_frame_size`` the largest frame payload it will build.

    Example::

        encoder = FrameEncoder("msgpack", byte_budget=4096)
        for tick in ticks:
            frame = encoder.add(tick)       # bytes when the batch reached 4 KiB, else None
            if frame:
                sock.sendall(frame)
        sock.sendall(encoder.flush())       # the rest (b"" if nothing is pending)

        FrameDecoder().feed(FrameEncoder("json").encode([1, "two"]))  # -> [1, "two"]

    Messages are encoded when added, so a message the codec cannot represent (or one larger
    than a frame) raises :class:`FramingError` from :meth:`add` and is not queued. msgpack sends
    ``bytes`` as bin and ``str`` as str; tuples come back as lists. JSON has no bytes type.
    """

    __slots__ = (
        "_items",
        "_limit",
        "_lz4_skip",
        "_packer",
        "_size",
        "byte_budget",
        "codec",
        "codec_id",
        "frames",
        "lz4",
        "max_frame_size",
        "messages",
    )

    def __init__(
        self,
        codec: Codec = "msgpack",
        *,
        lz4: bool = False,
        byte_budget: int = BYTE_BUDGET,
        max_frame_size: int = MAX_FRAME_SIZE,
    ) -> None:
        if codec not in _CODEC_IDS:
            raise FramingError(f"unknown codec {codec!r}: expected 'msgpack' or 'json'")
        if codec == "msgpack" and _msgpack is None:
            raise FramingError("codec 'msgpack' needs the msgpack package (wirespeed[codecs])")
        if lz4 and _lz4_block is None:
            raise FramingError("lz4=True needs the lz4 package (wirespeed[codecs])")
        _check_sizes(byte_budget, max_frame_size)
        self.codec: Codec = codec
        self.codec_id = _CODEC_IDS[codec]
        self.lz4 = lz4
        self.byte_budget = byte_budget
        self.max_frame_size = max_frame_size
        #: Frames and messages produced so far (by :meth:`add`/:meth:`flush` and :meth:`encode`).
        self.frames = 0
        self.messages = 0
        self._packer: Callable[[Any], bytes] = (
            _msgpack.Packer(use_bin_type=True).pack if codec == "msgpack" else orjson.dumps
        )
        self._lz4_skip = 0
        # Pending bytes are counted as encoding + 1 (a JSON comma; for msgpack a spare byte), and
        # the array's own bytes are reserved, so a batch within the limit always fits a frame.
        self._limit = max_frame_size - _MSGPACK_ARRAY_OVERHEAD
        self._items: list[bytes] = []
        self._size = 0

    @property
    def packer(self) -> Callable[[Any], bytes]:
        """Encodes one message (raises ``TypeError``/``ValueError``; :meth:`add` wraps them)."""
        return self._packer

    @property
    def pending(self) -> int:
        """Messages added and not yet in a frame."""
        return len(self._items)

    def add(self, message: Any) -> bytes | None:
        """Queue ``message``; return a frame when the batch is ready, else ``None``.

        A frame comes back when the pending batch reaches ``byte_budget`` (this message
        included), or when this message would not fit the current frame (the frame then holds
        the earlier messages and this one starts the next batch).
        """
        item = _encode(self._packer, message, self.codec)
        size = self._size + len(item) + 1
        if size < self.byte_budget:
            self._items.append(item)
            self._size = size
            return None
        if size > self._limit:
            _check_message(item, self.max_frame_size)
            frame = self.flush()
            self._items.append(item)
            self._size = len(item) + 1
            return frame
        self._items.append(item)
        return self.flush()

    def flush(self) -> bytes:
        """A frame of every pending message (``b""`` when none is pending)."""
        items = self._items
        if not items:
            return b""
        self._items = []
        self._size = 0
        return self.frame(items)

    def encode(self, messages: Iterable[Any]) -> bytes:
        """One frame holding ``messages`` (independent of the pending batch).

        Raises :class:`FramingError` if a message cannot be encoded or the frame would exceed
        ``max_frame_size``.
        """
        items = [_encode(self._packer, m, self.codec) for m in messages]
        if sum(len(item) + 1 for item in items) > self._limit:
            raise FramingError(f"oversize batch: the frame would exceed {self.max_frame_size}")
        return self.frame(items)

    def frame(self, items: list[bytes]) -> bytes:
        """The frame of a batch of messages already encoded by :attr:`packer`."""
        self.frames += 1
        self.messages += len(items)
        if self.codec_id == CODEC_MSGPACK:
            parts = [_msgpack_array_header(len(items)), *items]
        else:
            parts = [b"[", b",".join(items), b"]"]
        if self.lz4:
            payload = b"".join(parts)
            compressed = self._compress(payload)
            if compressed is not None:
                return _HEADER.pack(len(compressed), self.codec_id, FLAG_LZ4) + compressed
            return _HEADER.pack(len(payload), self.codec_id, 0) + payload
        length = sum(map(len, parts))
        parts.insert(0, _HEADER.pack(length, self.codec_id, 0))
        return b"".join(parts)

    def _compress(self, payload: bytes) -> bytes | None:
        if len(payload) < LZ4_MIN_PAYLOAD:
            return None
        if self._lz4_skip:
            self._lz4_skip -= 1
            return None
        block: bytes = _lz4_block.compress(payload, store_size=False)
        size = len(block) + _USIZE.size
        if size > len(payload) - (len(payload) >> _LZ4_MIN_SAVING_SHIFT):
            self._lz4_skip = LZ4_BACKOFF
            return None
        return _USIZE.pack(len(payload)) + block


def _check_sizes(byte_budget: int, max_frame_size: int) -> None:
    if not _MSGPACK_ARRAY_OVERHEAD < max_frame_size <= 0xFFFFFFFF:
        raise ValueError("max_frame_size must be between 6 and 2**32 - 1")
    if not 0 < byte_budget <= max_frame_size - _MSGPACK_ARRAY_OVERHEAD:
        raise ValueError("byte_budget must be positive and at most max_frame_size - 5")


def _encode(packer: Callable[[Any], bytes], message: Any, codec: str) -> bytes:
    try:
        return packer(message)
    except _ENCODE_ERRORS as exc:
        raise FramingError(f"message cannot be encoded as {codec}: {exc}") from exc


def _check_message(item: bytes, max_frame_size: int) -> None:
    if len(item) + 1 > max_frame_size - _MSGPACK_ARRAY_OVERHEAD:
        raise FramingError(
            f"oversize message: {len(item)} bytes encoded, frames are limited to {max_frame_size}"
        )


class NdjsonEncoder:
    """Newline-delimited JSON for a :class:`Channel`: one ``orjson`` document per line.

    No frame header: a batch is its lines, so any NDJSON reader can consume the stream. orjson
    never emits a raw newline (control characters in strings are escaped), so a line is always
    one message. Used by :func:`ndjson_response`; works on a socket too.

    Example::

        encoder = NdjsonEncoder()
        encoder.frame([encoder.packer({"t": 1}), encoder.packer({"t": 2})])
        # b'{"t":1}\\n{"t":2}\\n'
    """

    __slots__ = ("byte_budget", "frames", "max_frame_size", "messages")

    codec = "ndjson"

    def __init__(
        self, *, byte_budget: int = BYTE_BUDGET, max_frame_size: int = MAX_FRAME_SIZE
    ) -> None:
        _check_sizes(byte_budget, max_frame_size)
        self.byte_budget = byte_budget
        self.max_frame_size = max_frame_size
        self.frames = 0
        self.messages = 0

    @property
    def packer(self) -> Callable[[Any], bytes]:
        """Encodes one message as JSON (``orjson.dumps``)."""
        return orjson.dumps

    def frame(self, items: list[bytes]) -> bytes:
        """The lines of a batch, each ended by ``\\n``."""
        self.frames += 1
        self.messages += len(items)
        return b"\n".join(items) + b"\n"


# -- decoding ------------------------------------------------------------------------------------


def _decode_msgpack(payload: bytes) -> Any:
    if _msgpack is None:
        raise FramingError("msgpack frame, but the msgpack package is not installed")
    try:
        return _msgpack.unpackb(payload, raw=False)
    except Exception as exc:  # msgpack raises ValueError, TypeError and its own UnpackException
        raise FramingError(f"bad msgpack payload: {exc or type(exc).__name__}") from exc


def _decode_json(payload: bytes) -> Any:
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise FramingError(f"bad JSON payload: {exc}") from exc


_DECODERS: Final[dict[int, Callable[[bytes], Any]]] = {
    CODEC_MSGPACK: _decode_msgpack,
    CODEC_JSON: _decode_json,
}


class FrameDecoder:
    """Turn a byte stream of frames back into messages, whatever the fragmentation.

    :meth:`feed` takes the bytes as they arrive (a whole buffer, a byte at a time, anything in
    between) and returns the messages of every frame they complete, in order and flattened
    across frames. :meth:`close` declares the end of the stream and raises if it cut a frame.

    Example::

        decoder = FrameDecoder()
        while data := sock.recv(65536):
            for message in decoder.feed(data):
                handle(message)
        decoder.close()                     # FramingError if the stream ended mid-frame

    Raises :class:`FramingError` for a frame longer than ``max_frame_size`` (as soon as its
    header is in, before any payload is buffered), an unknown codec or flag, corrupt lz4, an lz4
    payload whose declared size exceeds ``max_frame_size``, bad msgpack/JSON, or a payload that
    is not an array. After an error the decoder stays failed: every later call raises.
    """

    __slots__ = ("_buffer", "_failed", "max_frame_size")

    def __init__(self, max_frame_size: int = MAX_FRAME_SIZE) -> None:
        if not 0 < max_frame_size <= 0xFFFFFFFF:
            raise ValueError("max_frame_size must be between 1 and 2**32 - 1")
        self.max_frame_size = max_frame_size
        self._buffer = bytearray()
        self._failed: FramingError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received that belong to a frame not yet complete."""
        return len(self._buffer)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Any]:
        """Add received bytes; return the messages of the frames they complete."""
        if self._failed is not None:
            raise FramingError(f"decoder failed earlier: {self._failed}")
        buf = self._buffer
        buf += data
        end = len(buf)
        pos = 0
        out: list[Any] = []
        limit = self.max_frame_size
        try:
            while end - pos >= HEADER_SIZE:
                length, codec, flags = _HEADER.unpack_from(buf, pos)
                if length > limit:
                    raise FramingError(
                        f"oversize frame: header announces {length} bytes, the limit is {limit}"
                    )
                decode = _DECODERS.get(codec)
                if decode is None:
                    raise FramingError(f"unknown codec 0x{codec:02x} in frame header")
                if flags & ~FLAG_LZ4:
                    raise FramingError(f"unknown flags 0x{flags:02x} in frame header")
                start = pos + HEADER_SIZE
                stop = start + length
                if stop > end:
                    break  # the payload is still on its way
                payload = bytes(buf[start:stop])
                if flags:
                    payload = self._inflate(payload)
                batch = decode(payload)
                if type(batch) is not list:
                    raise FramingError(f"frame payload is a {type(batch).__name__}, not an array")
                out.extend(batch)
                pos = stop
        except FramingError as exc:
            exc.messages = out
            self._failed = exc
            raise
        if pos:
            del buf[:pos]
        return out

    def _inflate(self, payload: bytes) -> bytes:
        if _lz4_block is None:
            raise FramingError("lz4 frame, but the lz4 package is not installed")
        if len(payload) < _USIZE.size:
            raise FramingError("corrupt lz4 payload: shorter than its 4-byte size field")
        (size,) = _USIZE.unpack_from(payload)
        if size > self.max_frame_size:
            raise FramingError(
                f"oversize frame: lz4 payload inflates to {size} bytes,"
                f" the limit is {self.max_frame_size}"
            )
        try:
            raw: bytes = _lz4_block.decompress(
                memoryview(payload)[_USIZE.size :], uncompressed_size=size
            )
        except Exception as exc:  # lz4.block.LZ4BlockError, not importable by name
            raise FramingError(f"corrupt lz4 payload: {exc}") from exc
        if len(raw) != size:
            raise FramingError(
                f"corrupt lz4 payload: inflated to {len(raw)} bytes, header said {size}"
            )
        return raw

    def close(self) -> None:
        """Declare the end of the stream; raise :class:`FramingError` if it ended mid-frame."""
        if self._failed is not None:
            raise FramingError(f"decoder failed earlier: {self._failed}")
        if self._buffer:
            have = len(self._buffer)
            if have < HEADER_SIZE:
                detail = f"{have} of the {HEADER_SIZE} header bytes"
            else:
                (length,) = _USIZE.unpack_from(self._buffer)
                detail = f"{have - HEADER_SIZE} of {length} payload bytes"
            self._failed = FramingError(f"truncated frame: the stream ended after {detail}")
            raise self._failed


async def receive_messages(
    reader: asyncio.StreamReader,
    *,
    max_frame_size: int = MAX_FRAME_SIZE,
    read_size: int = 256 * 1024,
) -> AsyncIterator[Any]:
    """Yield the messages framed on ``reader`` until end of stream.

    ``read_size`` is how much one read asks for (256 KiB: several batches per wake-up at the
    default budget; arbitrary beyond that). Raises :class:`FramingError` for a bad frame or a
    stream that ends mid-frame.

    Example::

        reader, writer = await asyncio.open_connection(host, port)
        async for message in receive_messages(reader):
            print(message)
    """
    decoder = FrameDecoder(max_frame_size)
    while data := await reader.read(read_size):
        for message in decoder.feed(data):
            yield message
    decoder.close()


# -- the channel ---------------------------------------------------------------------------------


def _no_nagle(transport: asyncio.BaseTransport) -> None:
    """Turn Nagle's algorithm off on a TCP transport's socket.

    The channel coalesces under a latency bound; Nagle on top would hold a batch smaller than
    a segment until the previous one is acknowledged, and with delayed ACKs that is up to 40 ms
    (Linux) past the bound. uvloop sets TCP_NODELAY itself; asyncio only for sockets created
    with ``proto=IPPROTO_TCP``, so a socket made with ``socket.socket()`` keeps Nagle.
    """
    sock = transport.get_extra_info("socket")
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    with contextlib.suppress(OSError):  # not a stream socket, or already closed
        if sock.type == socket.SOCK_STREAM:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class Channel:
    """Send messages over an asyncio stream or transport, many per write.

    ``await channel.send(message)`` queues the message in the current batch. The batch is
    written (one ``transport.write``) when it reaches the encoder's byte budget, ``max_delay``
    seconds after its first message (default 1 ms), on :meth:`flush`, on :meth:`close`, and
    before the channel waits for a peer that is behind. ``send`` waits while the transport's
    buffer is above its high-water mark, so a reader that stops reading stops the producer
    instead of growing memory: at most the high-water mark plus one batch are buffered.

    :meth:`write` + :meth:`drain` is the same split as :class:`asyncio.StreamWriter`'s: ``write``
    queues without waiting and returns False when the caller should drain (cheaper per message
    than ``send``, which is one coroutine per call).

    Give either an :class:`asyncio.StreamWriter`, or a transport plus the
    :class:`~wirespeed.io.flow.WriteFlow` its protocol drives from ``pause_writing`` /
    ``resume_writing``. ``encoder`` chooses the wire format (default: msgpack frames, no lz4).
    On a TCP socket the channel turns Nagle's algorithm off (``TCP_NODELAY``): it does the
    coalescing itself, under its bound.

    Example::

        reader, writer = await asyncio.open_connection(host, port)
        async with Channel(writer, FrameEncoder("json", lz4=True), max_delay=0.005) as channel:
            async for tick in feed:
                await channel.send(tick)
        # leaving the block flushes the last batch and closes the connection

    A message the encoder cannot encode, or one larger than a frame, raises
    :class:`FramingError` from ``send``/``write`` (nothing is queued). After :meth:`close` they
    raise :class:`RuntimeError`; once the connection is lost, :class:`ConnectionResetError` (a
    batch whose write found the transport closing is dropped). Use a channel from one task at a
    time, like a ``StreamWriter``. The timer needs a running event loop: create the channel in a
    coroutine.
    """

    __slots__ = (
        "_blocked",
        "_budget",
        "_closed",
        "_codec",
        "_deadline",
        "_encoder",
        "_flow",
        "_high",
        "_items",
        "_limit",
        "_loop",
        "_lost",
        "_packer",
        "_size",
        "_timer",
        "_transport",
        "_writer",
        "batches_written",
        "bytes_written",
        "max_delay",
        "messages_written",
    )

    def __init__(
        self,
        stream: asyncio.StreamWriter | asyncio.WriteTransport,
        encoder: BatchEncoder | None = None,
        *,
        flow: WriteFlow | None = None,
        max_delay: float = MAX_DELAY,
    ) -> None:
        if max_delay < 0:
            raise ValueError("max_delay must not be negative")
        self._loop = asyncio.get_running_loop()
        self._writer: asyncio.StreamWriter | None
        if isinstance(stream, asyncio.StreamWriter):
            if flow is not None:
                raise TypeError("flow= is for a bare transport: a StreamWriter has its own")
            self._writer = stream
            self._transport: asyncio.WriteTransport = stream.transport
        else:
            if flow is None:
                raise TypeError(
                    "a bare transport needs flow=WriteFlow(transport), driven by its protocol's"
                    " pause_writing/resume_writing"
                )
            self._writer = None
            self._transport = stream
        self._flow = flow
        self._high = self._transport.get_write_buffer_limits()[1]
        _no_nagle(self._transport)
        self._encoder: BatchEncoder = encoder if encoder is not None else FrameEncoder()
        self.max_delay = max_delay
        #: Batches, bytes and messages handed to the transport, for logs and benchmarks.
        self.batches_written = 0
        self.bytes_written = 0
        self.messages_written = 0
        # The pending batch: encodings, and their size counted as FrameEncoder.add counts it.
        self._packer = self._encoder.packer
        self._codec = self._encoder.codec
        self._items: list[bytes] = []
        self._size = 0
        self._budget = self._encoder.byte_budget
        self._limit = self._encoder.max_frame_size - _MSGPACK_ARRAY_OVERHEAD
        # True when write() must take the slow path and drain() must wait: the transport is
        # above its high-water mark, or the channel is closed or its connection lost.
        self._blocked = False
        self._closed = False
        self._lost: BaseException | None = None
        # time.monotonic() by which the pending batch must be written; 0.0 while none is pending.
        self._deadline = 0.0
        # Armed exactly while a batch is pending: write() reads None as "this message starts one".
        self._timer: asyncio.TimerHandle | None = None

    @property
    def encoder(self) -> BatchEncoder:
        """The encoder that builds this channel's batches."""
        return self._encoder

    @property
    def pending(self) -> int:
        """Messages queued and not yet written."""
        return len(self._items)

    @property
    def paused(self) -> bool:
        """True when :meth:`drain` would wait (or raise): the transport is above its high-water
        mark, or the channel is closed or its connection lost."""
        return self._blocked

    @property
    def closed(self) -> bool:
        """:meth:`close` was called."""
        return self._closed

    def write(self, message: Any) -> bool:
        """Queue ``message`` without waiting; return False when the caller should :meth:`drain`.

        The split of :class:`asyncio.StreamWriter` (``write`` then ``drain``) with the return
        value of Node's ``stream.write``, which saves a call per message::

            for tick in ticks:
                if not channel.write(tick):
                    await channel.drain()

        ``write`` alone never stops a producer whose peer is behind: drain when it says so, or
        use :meth:`send`. Raises :class:`FramingError` if the message cannot be encoded or is
        larger than a frame (it is not queued), :class:`RuntimeError` after :meth:`close`,
        :class:`ConnectionResetError` once the connection is lost.
        """
        # The hot path of the module: FrameEncoder.add inlined, attribute reads only. Each
        # Python-level call or property saved here is 5-15% of the per-message cost measured
        # by scripts/bench_framing.py.
        if self._blocked and (self._closed or self._lost is not None):
            self._raise_unusable()
        try:
            item = self._packer(message)
        except _ENCODE_ERRORS as exc:
            raise FramingError(f"message cannot be encoded as {self._codec}: {exc}") from exc
        size = self._size + len(item) + 1
        if size >= self._budget:
            self._batch_full(item, size)
            return not self._blocked
        self._items.append(item)
        self._size = size
        # With no batch pending the deadline is 0.0, so one comparison covers both cases.
        if _monotonic() >= self._deadline:
            self._due()
        return not self._blocked

    async def send(self, message: Any) -> None:
        """Queue ``message``, then wait while the peer is behind: :meth:`write` + :meth:`drain`."""
        if not self.write(message):
            await self._wait_writable()

    async def drain(self) -> None:
        """Wait until the transport is below its high-water mark; at once if it already is.

        Before waiting it writes the pending batch, so no message sits in the channel while the
        peer catches up. Raises :class:`ConnectionResetError` if the connection is lost,
        :class:`RuntimeError` after :meth:`close`.
        """
        if self._blocked:
            await self._wait_writable()

    async def flush(self) -> None:
        """Write the pending batch now, without waiting for the latency bound, then
        :meth:`drain`. Raises like :meth:`drain`."""
        if self._closed or self._lost is not None:
            self._raise_unusable()
        self._cut()
        if self._blocked:
            await self._wait_writable()

    async def close(self) -> None:
        """Write the pending batch, then close the connection once its buffer is sent.

        Idempotent. Waits for a ``StreamWriter`` to finish closing, which takes as long as the
        peer needs to read what is buffered (wrap it in :func:`asyncio.timeout` if the peer may
        have stopped reading); a bare transport is closed and left to send its buffer on its own
        (asyncio transports send what they hold before closing the socket).
        """
        if self._closed:
            return
        self._cut()
        self._closed = True
        self._blocked = True
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(ConnectionError):
                await self._writer.wait_closed()
        else:
            self._transport.close()

    async def __aenter__(self) -> Channel:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- batches ---------------------------------------------------------------------------------

    def _batch_full(self, item: bytes, size: int) -> None:
        if size > self._limit:  # this message does not fit: it starts the next batch
            _check_message(item, self._encoder.max_frame_size)
            self._cut()
            self._items.append(item)
            self._size = len(item) + 1
            self._start_batch()
        else:
            self._items.append(item)
            self._cut()

    def _due(self) -> None:
        if self._timer is None:  # this message starts a batch
            self._start_batch()
        else:  # the producer held the loop past the deadline, so the timer could not run
            self._cut()

    def _start_batch(self) -> None:
        self._deadline = _monotonic() + self.max_delay
        self._timer = self._loop.call_later(self.max_delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._deadline = 0.0
        self._cut()

    def _cut(self) -> None:
        """Write the pending batch, if any, as one frame."""
        timer = self._timer
        if timer is not None:
            self._timer = None
            self._deadline = 0.0
            timer.cancel()
        items = self._items
        if not items:
            return
        self._items = []
        self._size = 0
        frame = self._encoder.frame(items)
        transport = self._transport
        if transport.is_closing():
            if self._lost is None:
                self._lost = ConnectionResetError("connection lost: batch dropped")
            self._blocked = True
            return
        self.batches_written += 1
        self.bytes_written += len(frame)
        self.messages_written += len(items)  # before the write: a transport may look (the bench)
        transport.write(frame)
        flow = self._flow
        if flow.paused if flow is not None else transport.get_write_buffer_size() > self._high:
            self._blocked = True

    async def _wait_writable(self) -> None:
        if self._closed or self._lost is not None:
            self._raise_unusable()
        self._cut()  # never hold messages back while waiting for the peer
        try:
            if self._writer is not None:
                await self._writer.drain()
            else:
                assert self._flow is not None
                await self._flow.drain()
        except ConnectionError as exc:
            self._lost = exc
            raise
        self._blocked = False

    def _raise_unusable(self) -> None:
        if self._closed:
            raise RuntimeError("Channel is closed")
        raise ConnectionResetError(str(self._lost))


# -- HTTP ----------------------------------------------------------------------------------------


class _BodyPipe(asyncio.WriteTransport):
    """A transport whose bytes become the items of a response body iterator.

    :class:`Channel` writes into it; :meth:`get` hands everything written so far to the server
    as one body chunk. Above ``high`` buffered bytes it pauses its :class:`WriteFlow`, so the
    producer waits for the HTTP client exactly as it would for a socket.
    """

    def __init__(self, high: int) -> None:
        super().__init__()
        self.flow = WriteFlow()
        self._high = high
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._closing = False
        self._waiter: asyncio.Future[None] | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._chunks.append(bytes(data))
        self._size += len(data)
        if self._size > self._high:
            self.flow.pause()
        self._wake()

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        self._closing = True
        self._wake()

    def get_write_buffer_size(self) -> int:
        return self._size

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (0, self._high)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self) -> bytes | None:
        """Everything written since the last call, or ``None`` once closed and empty."""
        while not self._chunks:
            if self._closing:
                return None
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        data = b"".join(self._chunks)
        self._chunks.clear()
        self._size = 0
        self.flow.resume()
        return data


def _body(
    source: AsyncIterable[Any] | Iterable[Any], encoder: BatchEncoder, max_delay: float
) -> AsyncIterator[bytes]:
    if max_delay < 0:
        raise ValueError("max_delay must not be negative")
    # Hold up to two batches for the client: one being sent, one being built.
    return _body_chunks(source, encoder, max_delay, 2 * encoder.byte_budget)


async def _body_chunks(
    source: AsyncIterable[Any] | Iterable[Any], encoder: BatchEncoder, max_delay: float, high: int
) -> AsyncIterator[bytes]:
    pipe = _BodyPipe(high)

    async def produce() -> None:
        async with Channel(pipe, encoder, flow=pipe.flow, max_delay=max_delay) as channel:
            if isinstance(source, AsyncIterable):
                async for message in source:
                    await channel.send(message)
            else:
                for message in source:
                    await channel.send(message)

    task = asyncio.create_task(produce())
    try:
        while (data := await pipe.get()) is not None:
            yield data
        await task  # re-raise the producer's error: the server then aborts the body
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        elif not task.cancelled():
            task.exception()  # retrieved: the client went away before the end


def framed_response(
    source: AsyncIterable[Any] | Iterable[Any],
    *,
    codec: Codec = "msgpack",
    lz4: bool = False,
    max_delay: float = MAX_DELAY,
    byte_budget: int = BYTE_BUDGET,
    max_frame_size: int = MAX_FRAME_SIZE,
    status: int = 200,
    headers: HeaderInput = None,
) -> StreamResponse:
    """A :class:`~wirespeed.StreamResponse` whose body is ``source``'s messages in frames.

    Messages are batched like :class:`Channel` does it (byte budget, ``max_delay``), each batch
    is one body chunk, and the producer waits while the client is slow. The content type is
    :data:`FRAMES_CONTENT_TYPE`; a client decodes the body with :class:`FrameDecoder`. An error
    raised by ``source`` aborts the response (the client sees a truncated body, never a clean
    end). Bad arguments raise :class:`FramingError` here, not mid-stream.

    Example::

        @app.get("/ticks")
        def ticks(request: Request) -> StreamResponse:
            return framed_response(market.ticks(), codec="msgpack", lz4=True)
    """
    from wirespeed.server.responses import StreamResponse  # noqa: PLC0415 (codec/ stays light)

    encoder = FrameEncoder(codec, lz4=lz4, byte_budget=byte_budget, max_frame_size=max_frame_size)
    body = _body(source, encoder, max_delay)
    return StreamResponse(body, status=status, headers=headers, content_type=FRAMES_CONTENT_TYPE)


def ndjson_response(
    source: AsyncIterable[Any] | Iterable[Any],
    *,
    max_delay: float = MAX_DELAY,
    byte_budget: int = BYTE_BUDGET,
    status: int = 200,
    headers: HeaderInput = None,
) -> StreamResponse:
    """A :class:`~wirespeed.StreamResponse` of ``source``'s messages as NDJSON, batched.

    One JSON document per line (``application/x-ndjson``), lines coalesced into body chunks by
    the same rule as :func:`framed_response`, so ``curl -N`` or any line reader can follow it.

    Example::

        @app.get("/events")
        def events(request: Request) -> StreamResponse:
            return ndjson_response(bus.subscribe())
    """
    from wirespeed.server.responses import StreamResponse  # noqa: PLC0415 (codec/ stays light)

    encoder = NdjsonEncoder(byte_budget=byte_budget)
    body = _body(source, encoder, max_delay)
    return StreamResponse(body, status=status, headers=headers, content_type=NDJSON_CONTENT_TYPE)
