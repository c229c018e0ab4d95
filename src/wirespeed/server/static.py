"""Static files: safe path resolution, MIME types, and the HTTP plan of a file response.

Theory of operation
-------------------
:class:`StaticFiles` is a handler (mount it with :meth:`App.static`). For each request it maps
the percent-decoded path to a file strictly inside its root and returns a :class:`FileResponse`;
it never opens anything itself. The connection then opens the file, ``fstat``\\ s the *open
descriptor* (so size, mtime and ETag describe exactly the bytes it will send, even if the path is
replaced meanwhile), picks a precompressed sibling when the client accepts it, and asks
:func:`plan_file` what to answer: 200, 206 (single range or ``multipart/byteranges``), 304, 412
or 416, with which header fields and which file segments. :func:`plan_file` is pure; the bytes
then leave by ``sendfile`` (:mod:`wirespeed.io.zerocopy`).

Path safety (aiohttp's and Go's rules): the request path is split on ``/`` after
percent-decoding; a segment of ``..``, a backslash or a NUL anywhere, or a segment that is
absolute on its own, is refused (404, saying nothing about what exists). The joined path is then
resolved with ``realpath`` and must still lie under the root's real path, so a symlink cannot
lead outside unless ``follow_symlinks=True`` was given explicitly. Directories answer with their
``index.html`` (a path without the trailing slash is redirected to the slash form first, as nginx
does, so relative links in the index work); listings are never generated.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from stat import S_ISDIR, S_ISLNK
from typing import TYPE_CHECKING
from urllib.parse import quote

from wirespeed.io.zerocopy import Segment
from wirespeed.proto.conditional import Precondition, evaluate_preconditions, if_range_allows
from wirespeed.proto.etag import make_etag
from wirespeed.proto.httpdate import format_http_date
from wirespeed.proto.ranges import (
    RangeNotSatisfiable,
    make_boundary,
    multipart_content_type,
    multipart_plan,
    parse_range,
)
from wirespeed.server.mime import content_type_for
from wirespeed.server.responses import FileResponse, Response

if TYPE_CHECKING:
    from wirespeed.server.app import App, Request

__all__ = [
    "PRECOMPRESSED",
    "FilePlan",
    "StaticFiles",
    "plan_file",
    "resolve_path",
    "static_app",
]

# Codings with a precompressed sibling suffix, best ratio first (the order we prefer on ties).
PRECOMPRESSED: tuple[tuple[str, str], ...] = (("zstd", ".zst"), ("br", ".br"), ("gzip", ".gz"))

# -- path resolution ------------------------------------------------------------------------


def resolve_path(root: str, relative: str, *, follow_symlinks: bool = False) -> str | None:
    """The real path of ``relative`` (a decoded URL path) under ``root``, or None if unsafe.

    ``root`` must be an absolute real path (``os.path.realpath`` of the folder). The file need
    not exist; None means "never serve this", whatever is on disk.
    """
    resolved = _resolve(root, relative, follow_symlinks)
    return None if resolved is None else resolved[0]


def _resolve(
    root: str, relative: str, follow_symlinks: bool
) -> tuple[str, os.stat_result | None] | None:
    """:func:`resolve_path`, plus a ``stat`` of the result (None if it does not exist).

    ``realpath`` costs an ``lstat`` per component of the whole path, root included, and the
    caller would then ``stat`` the result again. Only the components below ``root`` can be
    symlinks we have not vetted (``root`` is already real), so they are ``lstat``-ed one by one:
    without a symlink among them the joined path is already real, and the last ``lstat`` is the
    file's own stat. Only a path that contains a symlink pays for the full ``realpath``.
    """
    if "\x00" in relative or "\\" in relative:
        return None
    parts = []
    for segment in relative.split("/"):
        if segment in ("", "."):
            continue
        if segment == ".." or (":" in segment and os.name == "nt"):
            return None
        parts.append(segment)
    # Plain concatenation: root is absolute and no part is empty or contains "/", so this is
    # what os.path.join would build, without its per-part checks (measured: a third of the cost
    # of resolving a one-segment path).
    candidate = root + os.sep + os.sep.join(parts) if parts else root
    if follow_symlinks or not parts:
        try:
            return candidate, os.stat(candidate)
        except OSError:
            return candidate, None
    st: os.stat_result | None = None
    path = root
    for segment in parts:
        path += os.sep + segment
        try:
            st = os.lstat(path)
        except OSError:
            # Missing (or below a non-directory): nothing further down can exist, so nothing
            # further down is a symlink; opening it will fail with the right error.
            return candidate, None
        if S_ISLNK(st.st_mode):
            break
    else:
        return candidate, st
    real = os.path.realpath(candidate)
    if real != root and not real.startswith(root + os.sep):
        return None
    try:
        return real, os.stat(real)
    except OSError:
        return real, None


class StaticFiles:
    """A handler serving the files under ``directory``.

    Mount it with ``app.static("/media", "/srv/media")`` (or :meth:`App.mount`). Options:
    ``index`` (file answered for a directory, default ``index.html``; None disables),
    ``follow_symlinks`` (allow symlinks that lead outside the root; default off),
    ``precompressed`` (serve ``.zst``/``.br``/``.gz`` siblings to clients that accept them;
    default on), ``compress`` (otherwise compress text files up to 1 MiB on the fly when it pays,
    caching the result; default on, and off server-wide with ``--no-compress``),
    ``limit_rate`` / ``limit_rate_after`` (per-connection pacing, bytes), ``content_types``
    (extension -> type overrides, e.g. ``{".ts": "video/mp2t"}``).
    Only GET and HEAD are allowed (405 otherwise).
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        index: str | None = "index.html",
        follow_symlinks: bool = False,
        precompressed: bool = True,
        compress: bool = True,
        limit_rate: int | None = None,
        limit_rate_after: int = 0,
        content_types: Mapping[str, str] | None = None,
    ) -> None:
        root = os.path.realpath(os.fspath(directory))
        if not os.path.isdir(root):
            raise NotADirectoryError(f"not a directory: {directory}")
        self.root = root
        self.index = index
        self.follow_symlinks = follow_symlinks
        self.precompressed = precompressed
        self.compress = compress
        self.limit_rate = limit_rate
        self.limit_rate_after = limit_rate_after
        self.content_types = dict(content_types or {})

    def __call__(self, request: Request) -> Response | FileResponse:
        if request.method not in ("GET", "HEAD"):
            return Response(
                b"method not allowed\n",
                405,
                headers={"Allow": "GET, HEAD"},
                content_type="text/plain; charset=utf-8",
            )
        relative = request.path_params.get("path", request.path)
        resolved = _resolve(self.root, relative, self.follow_symlinks)
        if resolved is None:
            return _not_found()
        path, st = resolved
        if st is not None and S_ISDIR(st.st_mode):
            if not request.path.endswith("/"):
                # One leading slash only: "//host/" would send the browser to another host.
                location = quote("/" + request.path.lstrip("/") + "/", safe="/")
                if request.query_string:
                    location += "?" + request.query_string.decode("latin-1")
                return Response(
                    b"",
                    301,
                    headers={"Location": location},
                    content_type="text/plain; charset=utf-8",
                )
            if self.index is None:
                return _not_found()
            # Resolve again: the index itself may be a symlink leading outside the root.
            resolved = _resolve(self.root, relative + "/" + self.index, self.follow_symlinks)
            if resolved is None:
                return _not_found()
            path, st = resolved
        response = FileResponse(
            path,
            content_type=content_type_for(path, self.content_types),
            limit_rate=self.limit_rate,
            limit_rate_after=self.limit_rate_after,
            precompressed=self.precompressed,
            compress=self.compress,
        )
        # Siblings (.gz ...) are opened without following a symlink, so one cannot lead out.
        response.follow_symlinks = self.follow_symlinks
        response.stat = st
        return response


def _not_found() -> Response:
    return Response(b"not found\n", 404, content_type="text/plain; charset=utf-8")


def static_app(directory: str | os.PathLike[str], **options: object) -> App:
    """An :class:`App` that serves ``directory`` at ``/`` (what ``wirespeed serve DIR`` runs)."""
    from wirespeed.server.app import App  # noqa: PLC0415 - app imports this module lazily too

    app = App()
    app.static("/", directory, **options)
    return app


# -- the response plan (pure) ---------------------------------------------------------------


@dataclass(slots=True)
class FilePlan:
    """What to send for a file: status, header fields, content type and body segments."""

    status: int
    content_type: str | None
    fields: list[tuple[bytes, bytes]]
    content_length: int
    segments: list[Segment]


@lru_cache(maxsize=1024)  # one entry per hot file variant, like the open-file cache
def _validators(
    size: int, mtime_ns: int, second: int, coding: str | None, vary: bool
) -> tuple[tuple[bytes, bytes], ...]:
    """ETag, Last-Modified (``second``: the mtime, clamped to now), Content-Encoding, Vary."""
    fields = [
        (b"ETag", make_etag(size, mtime_ns, coding).encode("ascii")),
        (b"Last-Modified", format_http_date(second).encode("ascii")),
    ]
    if coding is not None:
        fields.append((b"Content-Encoding", coding.encode("ascii")))
    if vary:
        fields.append((b"Vary", b"Accept-Encoding"))
    return tuple(fields)


def plan_file(
    method: str,
    header: Callable[[bytes], bytes | None],
    *,
    status: int,
    size: int,
    mtime: float,
    mtime_ns: int,
    now: float,
    content_type: str,
    coding: str | None,
    vary: bool,
    conditional: bool = True,
) -> FilePlan:
    """Decide the answer to ``method`` for a file of ``size`` bytes.

    ``header(name)`` returns a request header's raw value (lowercase name) or None. ``coding``
    is the content coding of the representation being sent (None for identity), ``vary`` whether
    ``Vary: Accept-Encoding`` belongs on the response. ``status`` is the status for a full
    response (200 unless the handler chose another, which disables ranges and preconditions).
    ``conditional=False`` says the request has no Range and no ``If-*`` precondition field, so
    they are not looked up.
    """
    fields = list(_validators(size, mtime_ns, int(min(mtime, now) // 1), coding, vary))
    if status != 200:
        return FilePlan(status, content_type, fields, size, [(0, size)] if size else [])
    fields.append((b"Accept-Ranges", b"bytes"))
    if not conditional or (
        header(b"range") is None
        and header(b"if-none-match") is None
        and header(b"if-modified-since") is None
        and header(b"if-match") is None
        and header(b"if-unmodified-since") is None
    ):
        # The common request: nothing to evaluate, the whole file.
        return FilePlan(200, content_type, fields, size, [(0, size)] if size else [])
    etag = fields[0][1].decode("ascii")
    # RFC 9110 §8.8.2.1: Last-Modified must not be later than Date.
    modified = min(mtime, now)

    def text(name: bytes) -> str | None:
        value = header(name)
        return None if value is None else value.decode("latin-1")

    outcome = evaluate_preconditions(
        method,
        etag,
        modified,
        if_match=text(b"if-match"),
        if_unmodified_since=text(b"if-unmodified-since"),
        if_none_match=text(b"if-none-match"),
        if_modified_since=text(b"if-modified-since"),
    )
    if outcome is Precondition.NOT_MODIFIED:
        return FilePlan(304, None, fields, 0, [])
    if outcome is Precondition.PRECONDITION_FAILED:
        return FilePlan(412, None, fields, 0, [])
    range_header = text(b"range")
    if (
        method == "GET"
        and range_header is not None
        and coding is None
        and if_range_allows(text(b"if-range"), etag, modified)
    ):
        try:
            ranges = parse_range(range_header, size)
        except RangeNotSatisfiable as exc:
            fields.append((b"Content-Range", exc.content_range.encode("ascii")))
            return FilePlan(416, None, fields, 0, [])
        if ranges is not None and len(ranges) == 1:
            r = ranges[0]
            fields.append((b"Content-Range", r.content_range(size).encode("ascii")))
            return FilePlan(206, content_type, fields, r.length, [(r.start, r.length)])
        if ranges is not None:
            boundary = make_boundary()
            plan = multipart_plan(ranges, size, content_type, boundary)
            segments: list[Segment] = []
            for part_head, part in plan.parts:
                segments += (part_head, (part.start, part.length))
            segments.append(plan.trailer)
            return FilePlan(
                206,
                multipart_content_type(boundary),
                fields,
                plan.content_length,
                segments,
            )
    return FilePlan(200, content_type, fields, size, [(0, size)] if size else [])
