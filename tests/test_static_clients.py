"""Real clients against ``wirespeed serve DIR``: curl and ffprobe/ffmpeg, over both body paths.

One server process per body path serves a module-wide folder (a server start costs ~0.3 s):
``sendfile`` (the default) and ``pread`` (``--no-zero-copy``). What users will do, checked with
the tools they will do it with: byte ranges, resuming a partial download with ``curl -C -``,
``curl --compressed`` picking up a ``.gz`` sibling, revalidation, a segmented download with four
parallel ranges, and a video player's access pattern (ffprobe reading an mp4 over HTTP and
seeking into it with Range requests, which a recording relay in front of the server shows).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from email.utils import formatdate
from pathlib import Path

import pytest

from conftest import HttpResponse
from static_fixtures import (
    CURL,
    FFMPEG,
    FFPROBE,
    HELLO,
    OLD_MTIME,
    SECRET,
    RecordingProxy,
    StaticProcess,
    kill_static_process,
    make_mp4,
    parse_byteranges,
    pattern,
    set_mtime,
    start_static_process,
)

pytest_plugins = ["static_fixtures"]

pytestmark = pytest.mark.skipif(CURL is None, reason="curl is not installed")
needs_ffmpeg = pytest.mark.skipif(
    FFMPEG is None or FFPROBE is None, reason="ffmpeg/ffprobe are not installed"
)

MiB = 1024 * 1024
TEXT = HELLO * 400  # compresses well: the .gz sibling is much smaller


@dataclass
class Site:
    root: Path
    server: StaticProcess
    data: bytes  # root/data.bin
    mp4: Path | None  # root/clip.mp4

    @property
    def url(self) -> str:
        return self.server.url


@pytest.fixture(scope="module")
def site_root(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes, Path | None]:
    outside = tmp_path_factory.mktemp("clients")
    (outside / "secret.txt").write_bytes(SECRET)
    root = outside / "root"
    root.mkdir()
    data = pattern(8 * MiB + 17, seed=31)
    (root / "data.bin").write_bytes(data)
    (root / "page.txt").write_bytes(TEXT)
    (root / "page.txt.gz").write_bytes(gzip.compress(TEXT, mtime=0))
    set_mtime(root / "page.txt", OLD_MTIME)
    set_mtime(root / "page.txt.gz", OLD_MTIME + 1)
    (root / "data.bin").touch()
    set_mtime(root / "data.bin", OLD_MTIME)
    os.symlink("../secret.txt", root / "out.txt")
    mp4 = None
    if FFMPEG is not None:
        mp4 = root / "clip.mp4"
        make_mp4(mp4)
    return root, data, mp4


@pytest.fixture(scope="module", params=["sendfile", "pread"])
def site(
    request: pytest.FixtureRequest, site_root: tuple[Path, bytes, Path | None]
) -> Iterator[Site]:
    root, data, mp4 = site_root
    args = ["--no-zero-copy"] if request.param == "pread" else []
    server = start_static_process(root, *args)
    yield Site(root, server, data, mp4)
    kill_static_process(server.proc)


def curl(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[bytes]:
    assert CURL is not None
    return subprocess.run([CURL, "-sS", *args], capture_output=True, timeout=timeout, check=False)


def curl_response(*args: str) -> HttpResponse:
    """Status, fields and body of a curl transfer (``-D`` for the head, ``-o`` for the body)."""
    result = curl("-D", "-", *args)
    assert result.returncode == 0, result.stderr.decode()
    head, _, body = result.stdout.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    version, status, *reason = lines[0].split(" ", 2)
    fields = []
    for line in lines[1:]:
        name, _, value = line.partition(":")
        fields.append((name.strip().lower(), value.strip()))
    return HttpResponse(version, int(status), " ".join(reason), fields, body)


# -- curl ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rng", "start", "stop"),
    [("0-99", 0, 100), ("-500", -500, None), ("8388000-", 8388000, None), ("100-100", 100, 101)],
)
def test_curl_range(site: Site, rng: str, start: int, stop: int | None) -> None:
    resp = curl_response("-r", rng, f"{site.url}/data.bin")
    assert resp.status == 206
    assert resp.body == site.data[start:stop]
    assert resp.header("accept-ranges") == "bytes"


def test_curl_multiple_ranges_are_multipart(site: Site) -> None:
    resp = curl_response("-r", "0-9,4000000-4000009,-10", f"{site.url}/data.bin")
    assert resp.status == 206
    parts = parse_byteranges(resp)
    assert [(p.start, p.end) for p in parts] == [
        (0, 9),
        (4000000, 4000009),
        (len(site.data) - 10, len(site.data) - 1),
    ]
    assert all(p.data == site.data[p.start : p.end + 1] for p in parts)


def test_curl_resume_partial_download(site: Site, tmp_path: Path) -> None:
    out = tmp_path / "data.bin"
    out.write_bytes(site.data[: 3 * MiB + 5])  # an interrupted download
    result = curl("-C", "-", "-o", str(out), "-w", "%{http_code}", f"{site.url}/data.bin")
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout == b"206"
    assert out.read_bytes() == site.data


def test_curl_resume_of_a_complete_file_is_a_no_op(site: Site, tmp_path: Path) -> None:
    # The server answers 416 with Content-Range: bytes */SIZE; curl sees the file is complete.
    out = tmp_path / "page.txt"
    out.write_bytes(TEXT)
    result = curl("-C", "-", "-o", str(out), "-w", "%{http_code}", f"{site.url}/page.txt")
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout == b"416"
    assert out.read_bytes() == TEXT


def test_curl_compressed_uses_the_gz_sibling(site: Site) -> None:
    resp = curl_response("--compressed", f"{site.url}/page.txt")
    assert resp.status == 200
    assert resp.header("content-encoding") == "gzip"
    assert resp.header("vary") == "Accept-Encoding"
    assert int(resp.header("content-length") or 0) < len(TEXT) // 10
    assert resp.body == TEXT  # curl decoded it: the sibling is a valid gzip of the original
    plain = curl_response(f"{site.url}/page.txt")
    assert plain.header("content-encoding") is None and plain.body == TEXT
    assert plain.header("etag") != resp.header("etag")


def test_curl_compressed_with_range_gets_identity_bytes(site: Site) -> None:
    resp = curl_response("--compressed", "-r", "0-19", f"{site.url}/page.txt")
    assert resp.status == 206
    assert resp.header("content-encoding") is None
    assert resp.body == TEXT[:20]


def test_curl_revalidation(site: Site, tmp_path: Path) -> None:
    etags = tmp_path / "etag.txt"
    first = curl("-o", os.devnull, "--etag-save", str(etags), "-w", "%{http_code}",
                 f"{site.url}/data.bin")  # fmt: skip
    assert first.stdout == b"200"
    again = curl("-o", os.devnull, "--etag-compare", str(etags), "-w", "%{http_code}",
                 f"{site.url}/data.bin")  # fmt: skip
    assert again.stdout == b"304"
    since = formatdate(OLD_MTIME + 60, usegmt=True)
    newer = curl("-o", os.devnull, "-z", since, "-w", "%{http_code}", f"{site.url}/data.bin")
    assert newer.stdout == b"304"


def test_curl_head(site: Site) -> None:
    resp = curl_response("-I", "-o", os.devnull, f"{site.url}/data.bin")
    assert resp.status == 200
    assert resp.header("content-length") == str(len(site.data))
    assert resp.body == b""


def test_curl_symlink_outside_root_is_404(site: Site) -> None:
    result = curl("-o", "-", "-w", "\n%{http_code}", f"{site.url}/out.txt")
    assert SECRET not in result.stdout
    assert result.stdout.endswith(b"404")


def test_segmented_download_with_four_parallel_ranges(site: Site, tmp_path: Path) -> None:
    size = len(site.data)
    bounds = [size * i // 4 for i in range(5)]
    procs = []
    for i in range(4):
        rng = f"{bounds[i]}-{bounds[i + 1] - 1}"
        part = tmp_path / f"part{i}"
        procs.append((part, subprocess.Popen(
            [CURL or "curl", "-sS", "-f", "-r", rng, "-o", str(part), f"{site.url}/data.bin"]
        )))  # fmt: skip
    for _, proc in procs:
        assert proc.wait(30) == 0
    joined = b"".join(part.read_bytes() for part, _ in procs)
    assert len(joined) == size
    assert hashlib.sha256(joined).hexdigest() == hashlib.sha256(site.data).hexdigest()


# -- CLI switches, seen by curl --------------------------------------------------------------------


def test_cli_no_precompressed_no_compress_and_follow_symlinks(
    site_root: tuple[Path, bytes, Path | None],
) -> None:
    root, _, _ = site_root
    server = start_static_process(root, "--no-precompressed", "--no-compress", "--follow-symlinks")
    try:
        resp = curl_response("--compressed", f"{server.url}/page.txt")
        assert resp.header("content-encoding") is None
        assert resp.body == TEXT
        out = curl_response(f"{server.url}/out.txt")
        assert (out.status, out.body) == (200, SECRET)  # the explicit option, and only with it
    finally:
        kill_static_process(server.proc)


# -- video: ffprobe and ffmpeg over HTTP -----------------------------------------------------------


def _ffprobe(*args: str) -> dict:
    assert FFPROBE is not None
    result = subprocess.run(
        [FFPROBE, "-v", "error", "-of", "json", *args], capture_output=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr.decode()
    return json.loads(result.stdout)


@needs_ffmpeg
def test_ffprobe_reads_the_mp4(site: Site) -> None:
    info = _ffprobe(
        "-show_entries", "format=duration,format_name:stream=codec_type,width,height",
        f"{site.url}/clip.mp4",
    )  # fmt: skip
    assert float(info["format"]["duration"]) == pytest.approx(5.0, abs=0.1)
    assert "mp4" in info["format"]["format_name"]
    video = [s for s in info["streams"] if s["codec_type"] == "video"]
    assert (video[0]["width"], video[0]["height"]) == (320, 240)


@needs_ffmpeg
def test_ffprobe_seeks_with_range_requests(site: Site) -> None:
    assert site.mp4 is not None
    size = site.mp4.stat().st_size
    proxy = RecordingProxy(site.server.port)
    try:
        info = _ffprobe(
            "-read_intervals", "3%+1", "-select_streams", "v",
            "-show_entries", "frame=pts_time,key_frame",
            f"http://127.0.0.1:{proxy.port}/clip.mp4",
        )  # fmt: skip
        ranges = proxy.range_requests()
    finally:
        proxy.close()
    times = [float(f["pts_time"]) for f in info["frames"]]
    # The frames of seconds 3-4 (from the keyframe at 3 s), not the start of the clip.
    assert times, "no frames"
    assert 2.9 <= min(times) <= 3.05, min(times)
    assert max(times) <= 4.1, max(times)
    assert info["frames"][0]["key_frame"] == 1
    # The seek was a Range request into the middle of the file (what a player scrubbing a
    # video does), answered with the bytes from there on.
    starts = [int(r.removeprefix("bytes=").split("-")[0]) for r in ranges]
    assert any(size // 3 < s < size for s in starts), ranges


@needs_ffmpeg
def test_ffmpeg_input_seek_decodes_from_the_middle(site: Site, tmp_path: Path) -> None:
    assert FFMPEG is not None
    frame = tmp_path / "frame.png"
    result = subprocess.run(
        [FFMPEG, "-v", "error", "-ss", "4", "-i", f"{site.url}/clip.mp4",
         "-frames:v", "1", "-y", str(frame)],
        capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()
    assert frame.stat().st_size > 1000
    probe = _ffprobe("-show_entries", "stream=width,height", str(frame))
    assert (probe["streams"][0]["width"], probe["streams"][0]["height"]) == (320, 240)
