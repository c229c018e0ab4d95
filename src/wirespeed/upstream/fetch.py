"""``wirespeed fetch``: download a URL over parallel range requests on pooled connections.

Theory of operation
-------------------
*Probe.* One ``GET`` with ``Range: bytes=0-0`` asks the question and, when the answer is no,
is already the download. A ``206`` with ``Content-Range: bytes 0-0/SIZE`` means ranges work:
SIZE is the length, and the validator (a strong ``ETag``, else ``Last-Modified``) pins the
version of the resource. A ``200`` means the server ignores ranges: its body is streamed to the
file over that one connection. A ``416`` with ``bytes */0`` is an empty resource. Redirects are
followed (up to 10, like wget; the segments use the final URL); a 4xx/5xx is an error.

*Segments.* ``[0, SIZE)`` is cut into ``--connections`` equal segments (fewer for a small file:
at least :data:`MIN_SEGMENT` each), run by :func:`~wirespeed.upstream.batch.join_all` with that
many at once over one :class:`~wirespeed.upstream.pool.Pool` of the same size (the probe's
connection is reused by the first segment). Each segment is one ``Range`` request carrying
``If-Range: <validator>``: if the resource changed, the server answers 200 instead of 206, and
we stop rather than mix two versions. The ``ETag`` and total size of every 206 are compared with
the probe's as well, for servers that ignore ``If-Range``.

*In place.* The output file is preallocated (``posix_fallocate``, else ``ftruncate``) and each
segment writes its bytes at their offset with ``os.pwrite`` from one 256 KiB buffer per
connection (:meth:`StreamingResponse.write_to`), so memory does not grow with the file.

*Retries.* A segment whose connection drops (or times out, or cannot reconnect) is retried
from the byte it reached, with ``Range: bytes=<reached>-<end>``; after :data:`MAX_ATTEMPTS`
consecutive attempts without progress the fetch fails. Any progress resets the count.

*Resume.* While downloading, a sidecar state file ``FILE.wirespeed-state`` (JSON: URL, size,
validator and each segment's next byte) is rewritten atomically every second and on failure or
interruption, and removed on success. ``--continue`` loads it, re-probes, refuses to mix
versions if size or validator differ, and fetches only the missing bytes (a state file whose
FILE is missing or of another size is ignored: the download starts over). Without a state file,
``--continue`` treats an existing FILE shorter than the resource as a finished prefix (like
``curl -C -``, e.g. after a plain single-connection download). The state records bytes written
to the page cache, which survives the process dying but not the machine crashing: after an OS
crash, finish with ``--sha256`` to check.

*Verify.* ``--sha256 HEX`` hashes the finished file (in a worker thread, through
``hashlib.file_digest``) and fails on a mismatch.

Exit status: 0 done, 1 the download failed (one line on stderr: HTTP status, changed resource,
short body, network, checksum), 2 bad arguments, 130 interrupted (state kept for --continue).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import hashlib
import itertools
import json
import os
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from wirespeed.cliargs import OneLineParser, add_loop_arguments, positive_seconds
from wirespeed.upstream.batch import join_all
from wirespeed.upstream.client import (
    Client,
    ConnectionLost,
    InvalidURL,
    ProtocolError,
    StreamingResponse,
    Timeouts,
    parse_url,
)
from wirespeed.upstream.pool import ConnectError, Pool, UpstreamError, UpstreamTimeout

__all__ = [
    "ChecksumMismatch",
    "FetchResult",
    "ResourceChanged",
    "add_arguments",
    "fetch",
    "main",
]

# Default parallel connections: 4, axel's default; aria2c allows up to 16 per server. More helps
# only when one TCP connection cannot fill the path (loss, a per-connection server limit).
DEFAULT_CONNECTIONS: Final = 4
# Upper bound for --connections: 64, arbitrary; beyond it a server sees a denial of service.
MAX_CONNECTIONS: Final = 64
# Smallest segment: 1 MiB, arbitrary. Below it a request's round trip costs more than the
# parallelism gains, so a 3 MiB file uses at most 3 connections.
MIN_SEGMENT: Final = 1024 * 1024
# Consecutive attempts of one segment without a byte of progress before giving up: 5, with
# backoff 0.2, 0.4, 0.8, 1.6 s in between (about 3 s of a server being unreachable), arbitrary.
MAX_ATTEMPTS: Final = 5
_BACKOFF_FIRST: Final = 0.2
# Seconds between state-file saves: 1, so an interruption loses at most a second of progress
# from the record (the bytes are on disk anyway; they are fetched again).
STATE_INTERVAL: Final = 1.0
# Seconds between progress reports: 0.25 for a TTY bar (rich's default refresh is 10/s; 4/s
# is smooth enough and costs less CPU); 2 s between lines when stderr is not a terminal.
PROGRESS_INTERVAL: Final = 0.25
PLAIN_INTERVAL: Final = 2.0
STATE_SUFFIX: Final = ".wirespeed-state"
_CONTENT_RANGE: Final = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE)
_UNSATISFIED: Final = re.compile(r"bytes\s+\*/(\d+)\s*$", re.IGNORECASE)


class ResourceChanged(UpstreamError):
    """The remote resource changed between requests (validator or size differ)."""


class ChecksumMismatch(UpstreamError):
    """The finished file's SHA-256 is not the one asked for."""


@dataclass(slots=True)
class FetchResult:
    """What :func:`fetch` did: ``size`` bytes in the file, ``fetched`` of them downloaded now
    (less than ``size`` when resuming), ``segments`` ranges (0: no range support, one stream),
    ``retries`` segment attempts after a failure, and the file's ``sha256`` if it was checked."""

    size: int
    fetched: int
    elapsed: float
    segments: int
    retries: int
    url: str
    sha256: str | None = None


@dataclass(slots=True)
class _Segment:
    start: int
    end: int  # exclusive
    next: int  # first byte not yet written


@dataclass(slots=True)
class _Remote:
    url: str
    size: int | None
    etag: str | None
    last_modified: str | None
    ranges: bool

    @property
    def validator(self) -> str | None:
        """What If-Range may carry: a strong ETag, else a Last-Modified date (RFC 9110 13.1.5)."""
        if self.etag is not None and not self.etag.startswith("W/"):
            return self.etag
        return self.last_modified


@dataclass(slots=True)
class _Job:
    path: Path
    remote: _Remote
    segments: list[_Segment]
    fd: int
    fetched: int = 0
    retries: int = 0
    state_url: str = ""
    started: float = field(default_factory=time.monotonic)

    @property
    def done(self) -> int:
        return sum(s.next - s.start for s in self.segments)

    def save_state(self) -> None:
        state = {
            "url": self.state_url,
            "size": self.remote.size,
            "etag": self.remote.etag,
            "last_modified": self.remote.last_modified,
            "segments": [[s.start, s.end, s.next] for s in self.segments],
        }
        target = _state_path(self.path)
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, target)


def _state_path(path: Path) -> Path:
    return path.with_name(path.name + STATE_SUFFIX)


Progress = Callable[[int, int | None], None]


async def fetch(
    url: str,
    path: str | os.PathLike[str],
    *,
    connections: int = DEFAULT_CONNECTIONS,
    resume: bool = False,
    sha256: str | None = None,
    timeouts: Timeouts | None = None,
    progress: Progress | None = None,
    pool: Pool | None = None,
) -> FetchResult:
    """Download ``url`` to ``path`` over up to ``connections`` parallel range requests.

    See the module docstring for the protocol. ``progress(done, total)`` is called once when
    the transfer starts (``done`` > 0 when resuming), about four times a second, and once at
    the end (``total`` None when the size is unknown). Pass ``pool`` to reuse connections
    across fetches (it must allow ``connections`` per origin).

    Raises :class:`~wirespeed.upstream.client.StatusError` (4xx/5xx),
    :class:`ResourceChanged`, :class:`ConnectionLost` (short body without range support, or a
    segment that stopped making progress), :class:`ChecksumMismatch`, :class:`InvalidURL`,
    other :class:`UpstreamError` subclasses for the network, and ``OSError`` for the file.

    Example::

        result = await fetch("http://127.0.0.1:8080/big.iso", "big.iso", connections=8)
        print(f"{result.size} bytes in {result.elapsed:.1f} s")
    """
    if not 1 <= connections <= MAX_CONNECTIONS:
        raise ValueError(f"connections must be 1-{MAX_CONNECTIONS}, got {connections}")
    parse_url(url)  # InvalidURL before anything touches the disk
    target = Path(path)
    owned = pool is None
    pool = pool if pool is not None else Pool(max_size=connections)
    client = Client(pool, timeouts=timeouts, follow_redirects=True)
    started = time.monotonic()
    try:
        saved = _load_state(target, url) if resume else None
        async with client.stream("GET", url, headers={"Range": "bytes=0-0"}) as probe:
            remote = _describe(probe)
            if not remote.ranges:
                if resume and saved is not None:
                    raise UpstreamError(
                        f"{remote.url} no longer supports ranges: cannot continue; "
                        f"delete {_state_path(target)} to start over"
                    )
                fetched = await _stream_whole(probe, target, progress)
            else:
                await probe.read(1)  # the rest of the probe, so its connection is reused
        if remote.ranges:
            assert remote.size is not None
            job = _plan(target, url, remote, connections, saved, resume)
            try:
                await _run(job, client, connections, progress)
            finally:
                os.close(job.fd)
            size, fetched, segments, retries = (
                remote.size,
                job.fetched,
                len(job.segments),
                job.retries,
            )
        else:
            size, segments, retries = fetched, 0, 0
        await _verify(target, sha256)
        _state_path(target).unlink(missing_ok=True)
        elapsed = time.monotonic() - started
        digest = sha256.lower() if sha256 else None
        return FetchResult(size, fetched, elapsed, segments, retries, remote.url, digest)
    finally:
        if owned:
            await pool.aclose()


def _describe(probe: StreamingResponse) -> _Remote:
    """What the probe's answer says about the resource (raises for 4xx/5xx)."""
    etag, modified = probe.header("etag"), probe.header("last-modified")
    if probe.status == 416:
        match = _UNSATISFIED.match(probe.header("content-range") or "")
        if match and int(match.group(1)) == 0:
            return _Remote(probe.url, 0, etag, modified, ranges=False)
    probe.raise_for_status()
    if probe.status == 206:
        match = _CONTENT_RANGE.match(probe.header("content-range") or "")
        if match is None:
            raise ProtocolError(f"206 without a valid Content-Range from {probe.url}")
        if match.group(3) != "*" and int(match.group(1)) == 0:
            return _Remote(probe.url, int(match.group(3)), etag, modified, ranges=True)
        raise ProtocolError(f"unexpected Content-Range {match.group(0)!r} from {probe.url}")
    if probe.status != 200:
        raise ProtocolError(f"unexpected status {probe.status} {probe.reason} from {probe.url}")
    return _Remote(probe.url, probe.length, etag, modified, ranges=False)


async def _stream_whole(probe: StreamingResponse, target: Path, progress: Progress | None) -> int:
    """No ranges: the probe's own 200 (or empty 416) body is the file, in one stream."""
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    total = probe.length if probe.status == 200 else 0
    try:
        if probe.status != 200:
            return 0
        done = 0

        def advance(n: int) -> None:
            nonlocal done
            done += n

        async with _reporter(lambda: done, total, progress):
            try:
                written = await probe.write_to(fd, 0, on_progress=advance)
            except ConnectionLost as exc:
                raise ConnectionLost(
                    f"short body: {exc} (the server does not support ranges, so the "
                    "download cannot resume)",
                    received=exc.received,
                    expected=exc.expected,
                ) from None
        return written
    finally:
        os.close(fd)


def _load_state(target: Path, url: str) -> dict[str, Any] | None:
    path = _state_path(target)
    try:
        state = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise UpstreamError(f"cannot read {path}: {exc}; delete it to start over") from None
    if not isinstance(state, dict) or state.get("url") != url:
        raise UpstreamError(f"{path} belongs to another download; delete it to start over")
    return state


def _plan(
    target: Path,
    url: str,
    remote: _Remote,
    connections: int,
    saved: dict[str, Any] | None,
    resume: bool,
) -> _Job:
    """Open and preallocate the file and decide which byte ranges still need fetching."""
    size = remote.size
    assert size is not None
    segments: list[_Segment] | None = None
    existing = 0
    try:
        on_disk: int | None = target.stat().st_size
    except FileNotFoundError:
        on_disk = None
    if saved is not None and on_disk != saved.get("size"):
        # The state describes a preallocated file that is gone or was replaced: its record of
        # finished bytes no longer holds, so start over rather than trust it.
        saved = None
    if saved is not None:
        before = (saved.get("size"), saved.get("etag"), saved.get("last_modified"))
        now = (size, remote.etag, remote.last_modified)
        if before != now:
            raise ResourceChanged(
                f"{remote.url} changed since the partial download (size, ETag or "
                f"Last-Modified differ); delete {_state_path(target)} to start over"
            )
        segments = [_Segment(int(a), int(b), int(c)) for a, b, c in saved["segments"]]
    elif resume and on_disk is not None:
        existing = on_disk
        if existing > size:
            raise UpstreamError(
                f"{target} has {existing} bytes, more than the {size} of {remote.url}; "
                "cannot continue"
            )
    fd = os.open(target, os.O_RDWR | os.O_CREAT | (0 if resume else os.O_TRUNC), 0o644)
    try:
        _preallocate(fd, size)
    except BaseException:
        os.close(fd)
        raise
    if segments is None:
        segments = _split(existing, size, connections)
    return _Job(target, remote, segments, fd, state_url=url)


def _split(start: int, end: int, connections: int) -> list[_Segment]:
    span = end - start
    if span <= 0:
        return []
    count = max(1, min(connections, span // MIN_SEGMENT))
    bounds = [start + span * i // count for i in range(count + 1)]
    return [_Segment(a, b, a) for a, b in itertools.pairwise(bounds)]


def _preallocate(fd: int, size: int) -> None:
    """Reserve the file's blocks up front (no ENOSPC half way, less fragmentation)."""
    if size == 0:
        os.ftruncate(fd, 0)
        return
    if hasattr(os, "posix_fallocate"):
        try:
            os.posix_fallocate(fd, 0, size)
        except OSError as exc:
            # Filesystems without fallocate (some network and FUSE ones) say so; fall through.
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                raise
    if os.fstat(fd).st_size != size:
        os.ftruncate(fd, size)


async def _run(job: _Job, client: Client, connections: int, progress: Progress | None) -> None:
    todo = [s for s in job.segments if s.next < s.end]
    if not todo:
        return

    async def keep_state() -> None:
        while True:
            await asyncio.sleep(STATE_INTERVAL)
            job.save_state()

    saver = asyncio.create_task(keep_state())
    try:
        async with _reporter(lambda: job.done, job.remote.size, progress):
            await join_all((_segment(job, s, client) for s in todo), limit=connections)
    except BaseException:
        job.save_state()
        raise
    finally:
        saver.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await saver


async def _segment(job: _Job, seg: _Segment, client: Client) -> None:
    """Fetch one segment, retrying from the byte it reached."""
    remote = job.remote
    failures = 0
    while seg.next < seg.end:
        before = seg.next
        headers = {"Range": f"bytes={seg.next}-{seg.end - 1}"}
        if remote.validator is not None:
            headers["If-Range"] = remote.validator

        def advance(n: int) -> None:
            seg.next += n
            job.fetched += n

        try:
            async with client.stream("GET", remote.url, headers=headers) as response:
                _check_part(response, seg, remote)
                await response.write_to(job.fd, seg.next, on_progress=advance)
        except (ConnectionLost, ConnectError, UpstreamTimeout) as exc:
            failures = 1 if seg.next > before else failures + 1
            if failures >= MAX_ATTEMPTS:
                raise _gave_up(exc, seg, failures) from None
            job.retries += 1
            await asyncio.sleep(_BACKOFF_FIRST * 2 ** (failures - 1))


def _gave_up(exc: UpstreamError, seg: _Segment, failures: int) -> UpstreamError:
    """The same kind of error, saying which bytes could not be fetched."""
    message = (
        f"bytes {seg.next}-{seg.end - 1}: {exc} (gave up after {failures} attempts without "
        "progress; run again with --continue to resume)"
    )
    if isinstance(exc, UpstreamTimeout):
        return UpstreamTimeout(exc.phase, message)
    if isinstance(exc, ConnectionLost):
        return ConnectionLost(message, received=seg.next - seg.start, expected=seg.end - seg.start)
    return ConnectError(message)


def _check_part(response: StreamingResponse, seg: _Segment, remote: _Remote) -> None:
    """A segment's answer must be a 206 for our range of the same version of the resource."""
    if response.status == 200:
        raise ResourceChanged(
            f"{remote.url} changed during the download (If-Range failed: 200 instead of 206)"
        )
    if response.status == 416:
        raise ResourceChanged(f"{remote.url} changed during the download (416: size changed)")
    response.raise_for_status()
    if response.status != 206:
        raise ProtocolError(f"expected 206 for a range, got {response.status} from {remote.url}")
    etag = response.header("etag")
    if remote.etag is not None and etag != remote.etag:
        raise ResourceChanged(
            f"{remote.url} changed during the download (ETag {remote.etag} -> {etag})"
        )
    modified = response.header("last-modified")
    if (
        remote.etag is None
        and remote.last_modified is not None
        and modified != remote.last_modified
    ):
        raise ResourceChanged(
            f"{remote.url} changed during the download "
            f"(Last-Modified {remote.last_modified} -> {modified})"
        )
    match = _CONTENT_RANGE.match(response.header("content-range") or "")
    if match is None:
        raise ProtocolError(f"206 without a valid Content-Range from {remote.url}")
    first, last, total = int(match.group(1)), int(match.group(2)), match.group(3)
    if total != "*" and int(total) != remote.size:
        raise ResourceChanged(
            f"{remote.url} changed during the download (size {remote.size} -> {total})"
        )
    # A server may send less than asked (RFC 9110 14.2), never something else.
    if first != seg.next or last >= seg.end or last < first:
        raise ProtocolError(
            f"asked bytes {seg.next}-{seg.end - 1}, got {first}-{last} from {remote.url}"
        )
    if response.length is not None and response.length != last - first + 1:
        raise ProtocolError(
            f"Content-Length {response.length} does not match Content-Range {first}-{last}"
        )


async def _verify(target: Path, sha256: str | None) -> None:
    if sha256 is None:
        return

    def digest() -> str:
        with open(target, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()

    actual = await asyncio.to_thread(digest)
    if actual != sha256.lower():
        raise ChecksumMismatch(f"{target}: sha256 is {actual}, expected {sha256.lower()}")


@contextlib.asynccontextmanager
async def _reporter(done: Callable[[], int], total: int | None, progress: Progress | None) -> Any:
    """Call ``progress(done(), total)`` at the start, every PROGRESS_INTERVAL while the block
    runs, and at the end (when it succeeded)."""
    if progress is None:
        yield
        return
    callback = progress
    callback(done(), total)  # the starting point: bytes already there when resuming

    async def tick() -> None:
        while True:
            await asyncio.sleep(PROGRESS_INTERVAL)
            callback(done(), total)

    task = asyncio.create_task(tick())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    callback(done(), total)


# -- command line -------------------------------------------------------------------------------


def _url(text: str) -> str:
    try:
        parse_url(text)
    except InvalidURL as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _connections(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_CONNECTIONS:
        raise argparse.ArgumentTypeError(f"expected an integer 1-{MAX_CONNECTIONS}, got {text!r}")
    return value


def _sha256(text: str) -> str:
    if not re.fullmatch(r"[0-9a-fA-F]{64}", text):
        raise argparse.ArgumentTypeError(f"expected 64 hex digits, got {text!r}")
    return text.lower()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``wirespeed fetch`` arguments; values are checked by argparse types, so a bad
    one ends in ``parser.error`` (one line, exit status 2)."""
    parser.description = (
        "Download URL over parallel range requests on pooled connections, resumably."
    )
    parser.add_argument("url", metavar="URL", type=_url, help="an http:// URL")
    parser.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help="where to write (default: the last part of the URL path, or index.html)",
    )
    parser.add_argument(
        "--connections",
        type=_connections,
        default=DEFAULT_CONNECTIONS,
        metavar="N",
        help="parallel range requests when the server supports ranges (default %(default)s)",
    )
    parser.add_argument(
        "--continue",
        dest="resume",
        action="store_true",
        help=f"resume a partial download (FILE{STATE_SUFFIX} records its progress)",
    )
    parser.add_argument(
        "--sha256", type=_sha256, metavar="HEX", help="verify the finished file's SHA-256"
    )
    parser.add_argument(
        "--timeout",
        type=positive_seconds,
        default=Timeouts().read,
        metavar="SECONDS",
        help="give up on a connection that sends nothing this long (default %(default)s)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    add_loop_arguments(parser, log_level=False)


def _default_output(url: str) -> str:
    _, target = parse_url(url)
    name = target.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
    return name or "index.html"


def main(ns: argparse.Namespace) -> int:
    """Run ``wirespeed fetch`` with parsed :func:`add_arguments` flags; return the exit status.

    Failures print ``wirespeed fetch: error: <reason>`` on stderr and return 1.
    """
    output = ns.output or _default_output(ns.url)
    reporter = _Display(quiet=ns.quiet)
    timeouts = Timeouts(read=ns.timeout)

    async def run() -> FetchResult:
        return await fetch(
            ns.url,
            output,
            connections=ns.connections,
            resume=ns.resume,
            sha256=ns.sha256,
            timeouts=timeouts,
            progress=reporter.update,
        )

    if ns.loop == "uvloop":
        import uvloop  # noqa: PLC0415 - only this command needs it

        factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    else:
        factory = asyncio.new_event_loop
    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            result = runner.run(run())
    except (UpstreamError, OSError) as exc:
        reporter.close()
        message = str(exc) if isinstance(exc, UpstreamError) else _os_error(exc, output)
        print(f"wirespeed fetch: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        reporter.close()
        print("wirespeed fetch: interrupted; run again with --continue to resume", file=sys.stderr)
        return 130
    reporter.close()
    if not ns.quiet:
        rate = result.fetched / result.elapsed if result.elapsed > 0 else 0.0
        how = f"{result.segments} ranges" if result.segments else "one stream (no ranges)"
        checked = ", sha256 ok" if result.sha256 else ""
        print(
            f"wirespeed fetch: {output}: {result.size} bytes, fetched {result.fetched} in "
            f"{result.elapsed:.2f} s ({_size(rate)}/s) over {how}, "
            f"{result.retries} retries{checked}",
            file=sys.stderr,
        )
    return 0


def _os_error(exc: OSError, output: str) -> str:
    name = exc.filename if exc.filename is not None else output
    return f"{name}: {exc.strerror or exc}"


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n:.0f} B"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover


class _Display:
    """A rich progress bar on a terminal, a line every PLAIN_INTERVAL otherwise."""

    def __init__(self, *, quiet: bool) -> None:
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self._progress: Any = None
        self._task: Any = None
        self._last_line = time.monotonic()
        self._start = time.monotonic()
        self._base: int | None = None  # bytes present at the first report (a resume)

    def update(self, done: int, total: int | None) -> None:
        if self.quiet:
            return
        if self._base is None:
            self._base, self._start = done, time.monotonic()
        if not self.tty:
            now = time.monotonic()
            if now - self._last_line >= PLAIN_INTERVAL:
                self._last_line = now
                rate = (done - self._base) / max(now - self._start, 1e-9)
                share = f" of {_size(total)} ({100 * done // total}%)" if total else ""
                eta = f", ETA {(total - done) / rate:.0f} s" if total and rate > 0 else ""
                print(
                    f"wirespeed fetch: {_size(done)}{share}, {_size(rate)}/s{eta}",
                    file=sys.stderr,
                    flush=True,
                )
            return
        if self._progress is None:
            # Imported on first use: rich costs import time the non-interactive path skips.
            from rich.progress import (  # noqa: PLC0415
                BarColumn,
                DownloadColumn,
                Progress,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            self._progress = Progress(
                BarColumn(),
                DownloadColumn(binary_units=True),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                transient=True,
                auto_refresh=False,  # refreshed by our own ticks: no extra thread
            )
            self._progress.start()
            # Created at the resume point, so rich's rate counts only bytes fetched now.
            self._task = self._progress.add_task("fetch", total=total, completed=done)
        self._progress.update(self._task, completed=done, total=total, refresh=True)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def _standalone(argv: list[str]) -> int:
    parser = OneLineParser(prog="wirespeed fetch")
    add_arguments(parser)
    return main(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(_standalone(sys.argv[1:]))
