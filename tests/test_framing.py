"""Batched message framing: the frame layout, round trips under any fragmentation, every error,
the Channel over real loopback sockets (uvloop and asyncio), and the HTTP side read back by real
clients (``http.client`` and ``curl``).
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import os
import shutil
import socket
import struct
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import lz4.block
import msgpack
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import StartServer
from wirespeed import App, Request, StreamResponse
from wirespeed.codec.framing import (
    BYTE_BUDGET,
    CODEC_JSON,
    CODEC_MSGPACK,
    FLAG_LZ4,
    FRAMES_CONTENT_TYPE,
    HEADER_SIZE,
    LZ4_BACKOFF,
    MAX_DELAY,
    MAX_FRAME_SIZE,
    NDJSON_CONTENT_TYPE,
    Channel,
    Codec,
    FrameDecoder,
    FrameEncoder,
    FramingError,
    NdjsonEncoder,
    framed_response,
    ndjson_response,
    receive_messages,
)
from wirespeed.io.flow import WriteFlow

both_loops = pytest.mark.asyncio(loop_factories=["uvloop", "asyncio"])

HEADER = struct.Struct(">IBB")


def frame(payload: bytes, codec: int = CODEC_MSGPACK, flags: int = 0) -> bytes:
    """A frame built by hand, independent of the encoder under test."""
    return HEADER.pack(len(payload), codec, flags) + payload


def headers_of(stream: bytes) -> list[tuple[int, int, int]]:
    """(length, codec, flags) of every frame in ``stream``."""
    out = []
    pos = 0
    while pos < len(stream):
        length, codec, flags = HEADER.unpack_from(stream, pos)
        out.append((length, codec, flags))
        pos += HEADER_SIZE + length
    assert pos == len(stream), "frames do not tile the stream"
    return out


def batch(encoder: FrameEncoder, messages: list[Any]) -> bytes:
    """Everything ``add`` and ``flush`` produce for ``messages``."""
    out = [encoder.add(m) or b"" for m in messages]
    out.append(encoder.flush())
    return b"".join(out)


# -- the frame layout ----------------------------------------------------------------------------


def test_frame_layout_msgpack() -> None:
    data = FrameEncoder("msgpack").encode([1, b"\x00"])
    # length 5, codec 0x01, flags 0, then the array: fixarray(2), 1, bin8 of one byte.
    assert data == b"\x00\x00\x00\x05\x01\x00" + b"\x92\x01\xc4\x01\x00"


def test_frame_layout_json() -> None:
    data = FrameEncoder("json").encode([1, "a"])
    assert data == b"\x00\x00\x00\x07\x02\x00" + b'[1,"a"]'
    assert FrameEncoder("json").encode([]) == b"\x00\x00\x00\x02\x02\x00[]"


def test_frame_layout_lz4_stores_the_uncompressed_size() -> None:
    messages = ["the same words again and again"] * 50
    data = FrameEncoder("json", lz4=True).encode(messages)
    length, codec, flags = HEADER.unpack_from(data)
    assert (codec, flags) == (CODEC_JSON, FLAG_LZ4)
    assert length == len(data) - HEADER_SIZE
    plain = orjson.dumps(messages)
    (size,) = struct.unpack_from(">I", data, HEADER_SIZE)
    assert size == len(plain)
    block = data[HEADER_SIZE + 4 :]
    assert lz4.block.decompress(block, uncompressed_size=size) == plain
    assert length < len(plain) // 2


@pytest.mark.parametrize("count", [0, 1, 15, 16, 65535, 65536])
def test_msgpack_array_header_sizes(count: int) -> None:
    # fixarray below 16, array16 up to 65535, array32 beyond: msgpack's own packer must agree.
    encoder = FrameEncoder("msgpack", byte_budget=MAX_FRAME_SIZE - 5)
    data = encoder.encode([None] * count)
    assert data[HEADER_SIZE:] == msgpack.packb([None] * count)


# -- round trips ---------------------------------------------------------------------------------

_text = st.text(max_size=40)
_json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | _text
    # Compressible runs, so the lz4 path really compresses.
    | st.sampled_from(["price", "tick " * 30, "x" * 300])
)
_msgpack_scalars = _json_scalars | st.binary(max_size=60)


def _values(scalars: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=5) | st.dictionaries(_text, inner, max_size=5),
        max_leaves=12,
    )


MESSAGES = {
    "msgpack": st.lists(_values(_msgpack_scalars), max_size=60),
    "json": st.lists(_values(_json_scalars), max_size=60),
}


def _chunks(data: bytes, sizes: list[int]) -> Iterator[bytes]:
    pos = 0
    i = 0
    while pos < len(data):
        n = sizes[i % len(sizes)] if sizes else len(data)
        yield data[pos : pos + n]
        pos += n
        i += 1


@pytest.mark.parametrize("codec", ["msgpack", "json"])
@pytest.mark.parametrize("lz4", [False, True], ids=["plain", "lz4"])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_round_trip_under_random_fragmentation(
    codec: Codec, lz4: bool, data: st.DataObject
) -> None:
    messages = data.draw(MESSAGES[codec])
    budget = data.draw(st.integers(min_value=1, max_value=2000), label="byte_budget")
    encoder = FrameEncoder(codec, lz4=lz4, byte_budget=budget)
    stream = batch(encoder, messages)
    sizes = data.draw(st.lists(st.integers(min_value=1, max_value=200), max_size=20), label="cuts")
    decoder = FrameDecoder()
    got: list[Any] = []
    for piece in _chunks(stream, sizes):
        got += decoder.feed(piece)
    decoder.close()
    assert got == messages
    assert encoder.messages == len(messages)
    assert len(headers_of(stream)) == encoder.frames


@pytest.mark.parametrize("codec", ["msgpack", "json"])
@pytest.mark.parametrize("lz4", [False, True], ids=["plain", "lz4"])
@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_round_trip_one_byte_at_a_time(codec: Codec, lz4: bool, data: st.DataObject) -> None:
    messages = data.draw(MESSAGES[codec])
    stream = batch(FrameEncoder(codec, lz4=lz4, byte_budget=300), messages)
    decoder = FrameDecoder()
    got: list[Any] = []
    for i in range(len(stream)):
        got += decoder.feed(stream[i : i + 1])
        # Nothing is buffered beyond the frame in progress.
        assert decoder.buffered < HEADER_SIZE + 2000
    decoder.close()
    assert got == messages


def test_decoder_returns_messages_as_soon_as_their_frame_is_complete() -> None:
    encoder = FrameEncoder("json")
    first, second = encoder.encode(["a", "b"]), encoder.encode(["c"])
    decoder = FrameDecoder()
    assert decoder.feed(first + second[:3]) == ["a", "b"]
    assert decoder.buffered == 3
    assert decoder.feed(second[3:]) == ["c"]
    assert decoder.buffered == 0


# -- batching and compression --------------------------------------------------------------------


def test_add_cuts_a_frame_at_the_byte_budget() -> None:
    encoder = FrameEncoder("msgpack", byte_budget=1000)
    message = b"m" * 98  # bin8: 100 bytes encoded, 101 counted with the separator byte
    frames = [f for f in (encoder.add(message) for _ in range(25)) if f]
    assert len(frames) == 2  # at 10 and 20 messages (1010 >= 1000)
    assert encoder.pending == 5
    assert FrameDecoder().feed(frames[0]) == [message] * 10
    assert encoder.flush() == encoder.encode([message] * 5)
    assert encoder.flush() == b""


def test_a_message_that_does_not_fit_starts_the_next_frame() -> None:
    encoder = FrameEncoder("msgpack", byte_budget=900, max_frame_size=1000)
    small, big = b"s" * 500, b"b" * 600
    assert encoder.add(small) is None
    cut = encoder.add(big)  # 500 + 600 would exceed the 1000-byte frame
    assert cut is not None and FrameDecoder().feed(cut) == [small]
    assert encoder.pending == 1
    assert FrameDecoder().feed(encoder.flush()) == [big]


def test_frames_never_exceed_max_frame_size() -> None:
    encoder = FrameEncoder("json", byte_budget=4000, max_frame_size=4096)
    messages = [os.urandom(n % 700).hex() for n in range(200)]
    stream = batch(encoder, messages)
    assert all(length <= 4096 for length, _, _ in headers_of(stream))
    assert FrameDecoder(max_frame_size=4096).feed(stream) == messages


def test_lz4_only_when_it_pays_and_backs_off_after_a_miss() -> None:
    encoder = FrameEncoder("msgpack", lz4=True)
    compressible = ["sensor-7 temperature ok"] * 40
    random_bytes = [os.urandom(64) for _ in range(40)]
    assert headers_of(encoder.encode(compressible))[0][2] == FLAG_LZ4
    assert headers_of(encoder.encode(random_bytes))[0][2] == 0  # did not pay: sent as is
    # The miss makes the next LZ4_BACKOFF batches skip the attempt, then it tries again.
    flags = [headers_of(encoder.encode(compressible))[0][2] for _ in range(LZ4_BACKOFF + 1)]
    assert flags == [0] * LZ4_BACKOFF + [FLAG_LZ4]
    # Tiny payloads are never worth it.
    assert headers_of(FrameEncoder("json", lz4=True).encode(["aaaaaaaa"]))[0][2] == 0


def test_ndjson_encoder_lines() -> None:
    encoder = NdjsonEncoder()
    items = [encoder.packer(m) for m in ({"t": 1}, "line\nbreak", [1, 2])]
    out = encoder.frame(items)
    assert out == b'{"t":1}\n"line\\nbreak"\n[1,2]\n'
    assert [orjson.loads(line) for line in out.splitlines()] == [{"t": 1}, "line\nbreak", [1, 2]]


# -- errors --------------------------------------------------------------------------------------

_lz4_block = lz4.block.compress(b"[1,2,3]" * 30, store_size=False)
_bomb = struct.pack(">I", 0xFFFFFF00) + _lz4_block

BAD_STREAMS = [
    # (stream, words the error must contain), each a distinct way for input to be bad
    pytest.param(
        HEADER.pack(MAX_FRAME_SIZE + 1, CODEC_MSGPACK, 0), "oversize frame", id="oversize"
    ),
    pytest.param(frame(b"\x90", codec=0x07), "unknown codec 0x07", id="unknown-codec"),
    pytest.param(frame(b"\x90", codec=0x00), "unknown codec 0x00", id="codec-zero"),
    pytest.param(frame(b"\x90", flags=0x02), "unknown flags 0x02", id="unknown-flag"),
    pytest.param(
        frame(b"\x01\x02", flags=FLAG_LZ4), "shorter than its 4-byte size", id="lz4-short"
    ),
    pytest.param(
        frame(struct.pack(">I", 100) + b"\xff\xff\xff\xff garbage", flags=FLAG_LZ4),
        "corrupt lz4",
        id="lz4-corrupt",
    ),
    pytest.param(
        frame(struct.pack(">I", 500) + _lz4_block, CODEC_JSON, FLAG_LZ4),
        "corrupt lz4 payload: inflated to 210 bytes, header said 500",
        id="lz4-size-lie",
    ),
    pytest.param(frame(_bomb, CODEC_JSON, FLAG_LZ4), "lz4 payload inflates to", id="lz4-bomb"),
    pytest.param(frame(b"\xc1"), "bad msgpack", id="msgpack-reserved-byte"),
    pytest.param(frame(b"\x92\x01"), "bad msgpack", id="msgpack-short"),
    pytest.param(frame(b"\x91\x01\x02"), "bad msgpack", id="msgpack-extra-data"),
    pytest.param(frame(b""), "bad msgpack", id="msgpack-empty"),
    pytest.param(frame(b"[1,", CODEC_JSON), "bad JSON", id="json-truncated"),
    pytest.param(frame(b"[1] x", CODEC_JSON), "bad JSON", id="json-trailing"),
    pytest.param(frame(b'{"a":1}', CODEC_JSON), "payload is a dict, not an array", id="json-obj"),
    pytest.param(frame(b"\x05"), "payload is a int, not an array", id="msgpack-not-array"),
]


@pytest.mark.parametrize(("bad", "words"), BAD_STREAMS)
@pytest.mark.parametrize("split", ["whole", "bytewise"])
def test_bad_input_is_rejected_with_a_clear_error(bad: bytes, words: str, split: str) -> None:
    good = FrameEncoder("msgpack").encode(["before"])
    decoder = FrameDecoder()
    stream = good + bad
    pieces = [stream] if split == "whole" else [stream[i : i + 1] for i in range(len(stream))]
    got: list[Any] = []
    with pytest.raises(FramingError, match=words) as info:
        for piece in pieces:
            got += decoder.feed(piece)
    # The good frame before the bad one is not lost.
    assert got + info.value.messages == ["before"]
    # A decoder that failed stays failed: a byte stream cannot resynchronise.
    with pytest.raises(FramingError, match="failed earlier"):
        decoder.feed(good)
    with pytest.raises(FramingError, match="failed earlier"):
        decoder.close()


def test_oversize_is_rejected_from_the_header_alone() -> None:
    decoder = FrameDecoder(max_frame_size=1024)
    header = HEADER.pack(1025, CODEC_JSON, 0)
    assert decoder.feed(header[:5]) == []  # not a whole header yet: nothing to judge
    with pytest.raises(FramingError, match="1025 bytes, the limit is 1024"):
        decoder.feed(header[5:])  # no payload byte was ever fed


def test_a_frame_of_exactly_max_frame_size_is_accepted() -> None:
    payload = orjson.dumps(["x" * 1000])
    decoder = FrameDecoder(max_frame_size=len(payload))
    assert decoder.feed(frame(payload, CODEC_JSON)) == ["x" * 1000]


@pytest.mark.parametrize(
    ("stream", "words"),
    [
        pytest.param(b"\x00\x00", "after 2 of the 6 header bytes", id="in-header"),
        pytest.param(frame(b"\x92\x01\x02")[:-1], "after 2 of 3 payload bytes", id="in-payload"),
        pytest.param(
            HEADER.pack(10, CODEC_JSON, 0), "after 0 of 10 payload bytes", id="no-payload"
        ),
    ],
)
def test_truncated_stream(stream: bytes, words: str) -> None:
    decoder = FrameDecoder()
    assert decoder.feed(stream) == []
    with pytest.raises(FramingError, match=f"truncated frame: the stream ended {words}"):
        decoder.close()


def test_clean_end_of_stream() -> None:
    decoder = FrameDecoder()
    decoder.feed(FrameEncoder().encode([1]))
    decoder.close()  # no error: the stream ended between frames


def test_encoder_errors() -> None:
    with pytest.raises(FramingError, match="cannot be encoded as msgpack"):
        FrameEncoder("msgpack").add(object())
    with pytest.raises(FramingError, match="cannot be encoded as json"):
        FrameEncoder("json").add(b"bytes are not JSON")
    with pytest.raises(FramingError, match="cannot be encoded as json"):
        FrameEncoder("json").encode([{1: "non-str key"}])
    with pytest.raises(FramingError, match="unknown codec 'xml'"):
        FrameEncoder("xml")  # type: ignore[arg-type]
    encoder = FrameEncoder("msgpack", byte_budget=100, max_frame_size=1000)
    with pytest.raises(FramingError, match="oversize message: 1003 bytes encoded"):
        encoder.add(b"z" * 1000)
    assert encoder.pending == 0  # the message was not queued
    with pytest.raises(FramingError, match="oversize batch"):
        encoder.encode([b"z" * 400] * 3)
    with pytest.raises(ValueError, match="byte_budget"):
        FrameEncoder(byte_budget=2000, max_frame_size=1000)
    # The HTTP helpers check their arguments when called, not once the body is streaming.
    with pytest.raises(FramingError, match="unknown codec"):
        framed_response([1], codec="xml")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_delay"):
        ndjson_response([1], max_delay=-1)


# -- the Channel over loopback -------------------------------------------------------------------


class Peer:
    """The far end of a loopback connection: reads frames, noting when each message arrived."""

    def __init__(self) -> None:
        self.messages: list[Any] = []
        self.arrivals: list[float] = []
        self.reads = 0
        self.received = 0
        self.eof = asyncio.Event()
        self.error: BaseException | None = None
        self.reading = asyncio.Event()
        self.reading.set()
        self.conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.conn = (reader, writer)
        decoder = FrameDecoder()
        try:
            while True:
                await self.reading.wait()
                data = await reader.read(65536)
                if not data:
                    break
                self.reads += 1
                self.received += len(data)
                now = time.monotonic()
                for message in decoder.feed(data):
                    self.messages.append(message)
                    self.arrivals.append(now)
            decoder.close()
        except (FramingError, ConnectionError) as exc:
            self.error = exc
        finally:
            self.eof.set()
            writer.close()


@contextlib.asynccontextmanager
async def loopback(
    peer: Peer, *, sndbuf: int | None = None
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    server = await asyncio.start_server(peer.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    sock = socket.socket()
    if sndbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock)
    try:
        yield reader, writer
    finally:
        peer.reading.set()  # a test that failed while the peer was not reading must not hang
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
        server.close()
        await server.wait_closed()


async def until(condition: Any, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.001)


@both_loops
async def test_channel_coalesces_a_burst_into_few_writes() -> None:
    peer = Peer()
    async with loopback(peer) as (_, writer):
        channel = Channel(writer, FrameEncoder("msgpack", byte_budget=16 * 1024))
        messages = [{"seq": i, "px": 100.25, "sym": "ABC"} for i in range(20_000)]
        for m in messages:
            await channel.send(m)
        await channel.close()
        await asyncio.wait_for(peer.eof.wait(), 5)
    assert peer.error is None
    assert peer.messages == messages
    assert channel.messages_written == len(messages)
    # ~30 bytes each: about 16 KiB / 30 = 550 per batch, so ~37 writes instead of 20,000.
    assert channel.batches_written <= 40
    assert channel.bytes_written == peer.received


@both_loops
async def test_latency_bound_a_lone_message_goes_out_by_itself() -> None:
    peer = Peer()
    async with loopback(peer) as (_, writer):
        channel = Channel(writer, max_delay=0.02)
        sent = time.monotonic()
        await channel.send("lonely")
        await asyncio.sleep(0.005)
        assert peer.messages == []  # still waiting for company within the bound
        await until(lambda: peer.messages)
        delay = peer.arrivals[0] - sent
        # The timer wrote it (uvloop timers tick in whole ms: up to 1 ms early). Loose upper
        # bound: a busy CI machine can only make it later.
        assert 0.019 - 0.001 <= delay < 0.02 + 0.25, delay
        assert channel.batches_written == 1
        await channel.close()


@both_loops
async def test_latency_bound_coalesces_within_and_separates_across() -> None:
    peer = Peer()
    async with loopback(peer) as (_, writer):
        channel = Channel(writer, max_delay=0.05)
        for i in range(5):  # five messages well within 50 ms: one batch
            await channel.send(i)
            await asyncio.sleep(0.001)
        await until(lambda: len(peer.messages) == 5)
        assert channel.batches_written == 1
        for i in range(3):  # three messages far apart: one batch each
            await channel.send(i)
            await until(lambda n=i: len(peer.messages) == 6 + n)
        assert channel.batches_written == 4
        await channel.close()


@both_loops
async def test_latency_bound_holds_for_a_producer_that_blocks_the_loop() -> None:
    peer = Peer()
    async with loopback(peer) as (_, writer):
        channel = Channel(writer, max_delay=0.005)
        channel.write("first")
        time.sleep(0.01)  # the producer holds the loop: the timer cannot run
        channel.write("second")  # ... so this write sees the deadline passed and writes
        assert channel.batches_written == 1
        assert channel.pending == 0
        await until(lambda: len(peer.messages) == 2)
        await channel.close()


@both_loops
async def test_flush_writes_at_once_and_close_delivers_then_ends_the_stream() -> None:
    peer = Peer()
    async with loopback(peer) as (_, writer):
        channel = Channel(writer, max_delay=60.0)
        for i in range(3):
            await channel.send(i)
        assert channel.pending == 3
        await channel.flush()
        assert channel.pending == 0 and channel.batches_written == 1
        await until(lambda: len(peer.messages) == 3)
        await channel.send("last")
        await channel.close()
        await channel.close()  # idempotent
        await asyncio.wait_for(peer.eof.wait(), 5)
        assert peer.messages == [0, 1, 2, "last"]
        assert peer.error is None  # the stream ended between frames
        with pytest.raises(RuntimeError, match="closed"):
            await channel.send("too late")
        with pytest.raises(RuntimeError, match="closed"):
            channel.write("too late")


@both_loops
async def test_a_stream_writer_brings_its_own_flow_control() -> None:
    async with loopback(Peer()) as (_, writer):
        with pytest.raises(TypeError, match="flow= is for a bare transport"):
            Channel(writer, flow=WriteFlow())
        sock = writer.transport.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 0)
        Channel(writer)
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)  # Nagle off, read back


@both_loops
async def test_send_rejects_a_bad_message_and_the_channel_carries_on() -> None:
    peer = Peer()
    async with loopback(peer) as (_, writer):
        channel = Channel(writer, FrameEncoder("json", byte_budget=100, max_frame_size=200))
        await channel.send(1)
        with pytest.raises(FramingError, match="cannot be encoded as json"):
            await channel.send(object())
        with pytest.raises(FramingError, match="oversize message"):
            await channel.send("x" * 300)
        await channel.send(2)
        await channel.close()
        await asyncio.wait_for(peer.eof.wait(), 5)
        assert peer.messages == [1, 2]


@both_loops
async def test_backpressure_a_reader_that_stops_reading_stops_the_producer() -> None:
    peer = Peer()
    peer.reading.clear()  # the far end accepts the connection and does not read
    # A 64 KiB send buffer keeps the kernel's share small (16 KiB makes asyncio's loop crawl
    # through delayed ACKs once reading resumes: a kernel effect, not the channel's).
    async with loopback(peer, sndbuf=64 * 1024) as (_, writer):
        transport = writer.transport
        transport.set_write_buffer_limits(high=64 * 1024)
        budget = 8 * 1024
        channel = Channel(writer, FrameEncoder("msgpack", byte_budget=budget))
        message = b"p" * 100
        total = 50_000  # 5 MB: far beyond the kernel buffers of a reader that does not read
        sent = 0
        peak = 0

        async def produce() -> None:
            nonlocal sent, peak
            for _ in range(total):
                await channel.send(message)
                sent += 1
                peak = max(peak, transport.get_write_buffer_size())

        task = asyncio.create_task(produce())
        try:
            await until(lambda: channel.paused)
            await asyncio.sleep(0.3)
            # Stopped: the kernel may still take a little (it compacts its receive queue), but
            # the producer is nowhere near done, and user space holds a bounded amount.
            assert not task.done()
            assert sent < total // 2, sent
            assert channel.paused
            # The high-water mark, plus the batch cut before waiting, plus one message.
            assert peak <= 64 * 1024 + budget + 200, peak
            assert channel.pending == 0  # nothing held back in the channel while waiting
            peer.reading.set()
            await asyncio.wait_for(task, 20)
        finally:
            task.cancel()
        await channel.close()
        await asyncio.wait_for(peer.eof.wait(), 10)
    assert peer.messages == [message] * total


@both_loops
async def test_a_lost_connection_surfaces_as_connection_reset() -> None:
    peer = Peer()
    async with loopback(peer) as (_, writer):
        channel = Channel(writer, max_delay=0.001)
        await channel.send("hello")
        await until(lambda: peer.conn is not None and peer.messages)
        assert peer.conn is not None
        far = peer.conn[1].transport.get_extra_info("socket")
        far.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        peer.conn[1].transport.abort()  # RST
        with pytest.raises(ConnectionError):
            async with asyncio.timeout(5):
                while True:
                    await channel.send(b"x" * 1000)
                    await channel.flush()
                    await asyncio.sleep(0.001)
        with pytest.raises(ConnectionError):
            channel.write("after")


class FlowProtocol(asyncio.Protocol):
    """A plain protocol wiring its pause/resume callbacks to a WriteFlow."""

    def __init__(self) -> None:
        self.flow = WriteFlow()

    def pause_writing(self) -> None:
        self.flow.pause()

    def resume_writing(self) -> None:
        self.flow.resume()

    def connection_lost(self, exc: Exception | None) -> None:
        self.flow.close()


@both_loops
async def test_channel_over_a_bare_transport_with_write_flow() -> None:
    peer = Peer()
    peer.reading.clear()
    server = await asyncio.start_server(peer.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16 * 1024)
    sock.connect(("127.0.0.1", port))
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_connection(FlowProtocol, sock=sock)
    transport.set_write_buffer_limits(high=32 * 1024)
    try:
        with pytest.raises(TypeError, match="flow=WriteFlow"):
            Channel(transport)
        channel = Channel(transport, FrameEncoder("json", lz4=True), flow=protocol.flow)
        # Half random, half repetitive: lz4 pays, and 4 MB still outgrows every buffer.
        messages = [{"n": i, "id": os.urandom(8).hex(), "note": "ok " * 8} for i in range(50_000)]

        async def produce() -> None:
            for m in messages:
                if not channel.write(m):  # write, and drain when told to
                    assert channel.paused
                    await channel.drain()

        task = asyncio.create_task(produce())
        await until(lambda: protocol.flow.paused)
        assert not task.done()
        assert transport.get_write_buffer_size() <= 32 * 1024 + BYTE_BUDGET
        peer.reading.set()
        await asyncio.wait_for(task, 20)
        await channel.close()
        await asyncio.wait_for(peer.eof.wait(), 10)
    finally:
        peer.reading.set()
        transport.close()
        server.close()
        await server.wait_closed()
    assert peer.messages == messages
    assert channel.bytes_written < len(orjson.dumps(messages)) * 3 // 4  # lz4 paid off


@both_loops
async def test_receive_messages_reads_a_channel_end_to_end() -> None:
    got: list[Any] = []
    done = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        got.extend([m async for m in receive_messages(reader)])
        writer.close()
        done.set()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    async with Channel(writer, FrameEncoder("msgpack", lz4=True)) as channel:
        for i in range(1000):
            await channel.send([i, b"\x00" * (i % 50)])
    await asyncio.wait_for(done.wait(), 5)
    server.close()
    await server.wait_closed()
    assert got == [[i, b"\x00" * (i % 50)] for i in range(1000)]


@both_loops
async def test_receive_messages_reports_a_truncated_stream() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(FrameEncoder().encode(["whole"]) + HEADER.pack(50, CODEC_MSGPACK, 0) + b"\x91")
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
    messages = receive_messages(reader)
    assert await anext(messages) == "whole"
    with pytest.raises(FramingError, match="truncated frame: the stream ended after 1 of 50"):
        await anext(messages)
    writer.close()
    server.close()
    await server.wait_closed()


# -- HTTP ----------------------------------------------------------------------------------------

TICKS = [{"seq": i, "sym": "ACME", "px": 101.5 + i / 100} for i in range(3000)]


def http_app(gate: asyncio.Event | None = None) -> App:
    app = App()

    @app.get("/frames")
    def frames(request: Request) -> StreamResponse:
        codec: Codec = "json" if request.query.get("codec") == "json" else "msgpack"
        lz4 = request.query.get("lz4") == "1"

        async def ticks() -> AsyncIterator[dict[str, Any]]:
            for t in TICKS:
                yield t

        return framed_response(ticks(), codec=codec, lz4=lz4, byte_budget=4096)

    @app.get("/ndjson")
    def ndjson(request: Request) -> StreamResponse:
        return ndjson_response(iter(TICKS), byte_budget=4096)

    @app.get("/live")
    def live(request: Request) -> StreamResponse:
        async def source() -> AsyncIterator[str]:
            yield "first"
            assert gate is not None
            await gate.wait()
            yield "second"

        return framed_response(source(), codec="json", max_delay=0.01)

    @app.get("/broken")
    def broken(request: Request) -> StreamResponse:
        async def source() -> AsyncIterator[int]:
            yield 1
            raise RuntimeError("the feed died")

        return framed_response(source())

    return app


def fetch(port: int, path: str) -> tuple[int, str | None, str | None, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
        return (
            resp.status,
            resp.getheader("Content-Type"),
            resp.getheader("Transfer-Encoding"),
            body,
        )
    finally:
        conn.close()


@both_loops
@pytest.mark.parametrize("query", ["", "?lz4=1", "?codec=json", "?codec=json&lz4=1"])
async def test_framed_stream_response_read_by_http_client(serve: StartServer, query: str) -> None:
    server = await serve(http_app())
    status, ctype, te, body = await asyncio.to_thread(fetch, server.port, "/frames" + query)
    assert (status, ctype, te) == (200, FRAMES_CONTENT_TYPE, "chunked")
    decoder = FrameDecoder()
    assert decoder.feed(body) == TICKS
    decoder.close()
    frames = headers_of(body)
    assert len(frames) >= 10  # batched by the 4 KiB budget, not one frame for everything
    assert len(frames) < len(TICKS) // 50  # ... and not one frame per message
    assert all(flags == (FLAG_LZ4 if "lz4" in query else 0) for _, _, flags in frames)


@both_loops
async def test_ndjson_response_read_by_curl(serve: StartServer) -> None:
    if shutil.which("curl") is None:
        pytest.skip("curl not installed")
    server = await serve(http_app())
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sS", "-N", "-D", "-", f"http://127.0.0.1:{server.port}/ndjson",
        stdout=subprocess.PIPE,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 10)
    assert proc.returncode == 0
    head, _, body = out.partition(b"\r\n\r\n")
    assert f"content-type: {NDJSON_CONTENT_TYPE}".encode() in head.lower()
    assert [orjson.loads(line) for line in body.splitlines()] == TICKS
    assert body.endswith(b"\n")


@both_loops
async def test_framed_response_streams_live_within_the_latency_bound(serve: StartServer) -> None:
    gate = asyncio.Event()
    server = await serve(http_app(gate))
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /live HTTP/1.1\r\nHost: test\r\n\r\n")
    async with asyncio.timeout(5):
        head = await reader.readuntil(b"\r\n\r\n")
        assert b"200" in head.split(b"\r\n")[0]
        # The source is stuck after its first message: the timer must send that one anyway.
        size = int((await reader.readline()).strip(), 16)
        chunk = await reader.readexactly(size + 2)
        decoder = FrameDecoder()
        assert decoder.feed(chunk[:-2]) == ["first"]
        gate.set()
        size = int((await reader.readline()).strip(), 16)
        chunk = await reader.readexactly(size + 2)
        assert decoder.feed(chunk[:-2]) == ["second"]
        assert await reader.readline() == b"0\r\n"  # then a clean end
    writer.close()


@both_loops
async def test_a_failing_source_aborts_the_response(serve: StartServer) -> None:
    server = await serve(http_app())
    with pytest.raises(http.client.IncompleteRead) as info:
        await asyncio.to_thread(fetch, server.port, "/broken")
    # What did arrive is whole frames; the end of the body never came.
    assert FrameDecoder().feed(info.value.partial) == [1]


def test_defaults_are_the_documented_ones() -> None:
    assert (MAX_DELAY, BYTE_BUDGET, MAX_FRAME_SIZE, HEADER_SIZE) == (0.001, 65536, 1 << 20, 6)
