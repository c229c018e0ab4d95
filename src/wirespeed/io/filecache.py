"""Open-file cache: descriptors and their stat results, bounded in entries and age.

Theory of operation
-------------------
Serving a file costs ``open`` + ``fstat`` + ``close`` before the first byte moves. The cache
keeps the descriptor of recently served files open (like nginx's ``open_file_cache``) and
replaces those three calls with one ``stat`` of the path, which is also what keeps it honest:
an entry is reused only if the path still names the same file with the same size, mtime and
ctime. A file replaced (new inode), truncated or rewritten in place is reopened, never served
from the old descriptor as if it were the old file. Entries older than ``max_age`` seconds are
dropped anyway, and at most ``max_entries`` are kept (least recently used first out).

Paths that do not exist are remembered for ``max_age`` too (negative entries): a browser's
``Accept-Encoding`` makes the server look for ``.zst``/``.br``/``.gz`` siblings on every request,
and most of them are missing. A sibling created meanwhile is seen at most ``max_age`` later.

Small files (at most ``inline_limit`` bytes, 16 KiB by default) may also keep their contents:
:meth:`FileCache.contents` reads them once with ``pread`` and the bytes live exactly as long as
the entry, so they are dropped with it when the file changes. Below that size one ``write`` of
head and body from memory beats ``send`` of the head plus ``sendfile`` (see BENCHMARKS.md, "Small
files"), and the bound keeps the worst case at ``max_entries * inline_limit`` (16 MiB).

A caller that has just ``stat``-ed the path (the static handler does, to resolve it safely) can
pass that result to :meth:`FileCache.acquire` as ``known``; a hit then costs no system call.

Descriptors are shared: :meth:`FileCache.acquire` counts users and :meth:`FileCache.release`
closes a descriptor once it has neither users nor a cache entry, so eviction never closes a file
that is being sent. Sharing is safe because bodies are sent with explicit offsets (``sendfile``
with an offset, ``pread``), never through the file position.
"""

from __future__ import annotations

import os
import stat
import time
from collections import OrderedDict
from collections.abc import Callable

__all__ = ["FileCache", "OpenFile"]

# nginx's open_file_cache_valid defaults to 60 s but does not re-stat in between; we re-stat on
# every hit, so age only bounds how long a descriptor (and a negative entry) may linger.
MAX_AGE = 1.0
# Arbitrary: a hot set of 1024 files costs 1024 descriptors, well inside the usual 64k limit.
MAX_ENTRIES = 1024
# Files up to this size are answered from memory (see the module docstring). Measured through
# the static path (BENCHMARKS.md, "Small files"; wrk -c64, medians of 3): from memory against
# sendfile, 4 KiB 33.2k vs 30.7k req/s, 16 KiB 31.9k vs 31.6k (even), 64 KiB 16.3k vs 26.8k.
# With MAX_ENTRIES this bounds the cached contents at 16 MiB.
INLINE_LIMIT = 16 * 1024


class OpenFile:
    """An open regular file: ``fd`` and the ``stat`` that describes exactly those bytes."""

    __slots__ = ("cached", "data", "expires", "fd", "key", "stat", "users")

    def __init__(self, fd: int, st: os.stat_result, key: str, expires: float) -> None:
        self.fd = fd
        self.stat = st
        self.key = key
        self.expires = expires
        self.users = 0
        self.cached = False
        #: The whole file, once :meth:`FileCache.contents` has read it.
        self.data: bytes | None = None


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (
        a.st_ino == b.st_ino
        and a.st_dev == b.st_dev
        and a.st_size == b.st_size
        and a.st_mtime_ns == b.st_mtime_ns
        and a.st_ctime_ns == b.st_ctime_ns
    )


class FileCache:
    """Open descriptors of recently served regular files (see the module docstring).

    Example::

        cache = FileCache()
        opened = cache.acquire("/srv/media/movie.mp4", os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.sendfile(sock_fd, opened.fd, 0, opened.stat.st_size)
        finally:
            cache.release(opened)

    :meth:`acquire` raises what ``os.open`` raises (FileNotFoundError, PermissionError ...) and
    :class:`IsADirectoryError` for anything that is not a regular file. ``max_entries=0`` turns
    caching off (every acquire opens, every release closes); ``inline_limit=0`` never keeps
    contents.
    """

    def __init__(
        self,
        max_entries: int = MAX_ENTRIES,
        max_age: float = MAX_AGE,
        clock: Callable[[], float] = time.monotonic,
        inline_limit: int = INLINE_LIMIT,
    ) -> None:
        self.max_entries = max_entries
        self.max_age = max_age
        self.inline_limit = inline_limit
        self._clock = clock
        self._entries: OrderedDict[tuple[str, int], OpenFile] = OrderedDict()
        self._missing: OrderedDict[tuple[str, int], float] = OrderedDict()
        #: Counters for logs and the lab.
        self.hits = 0
        self.misses = 0

    def acquire(self, path: str, flags: int, known: os.stat_result | None = None) -> OpenFile:
        """An open regular file for ``path``; pair every call with :meth:`release`.

        ``known`` is a ``stat`` of ``path`` the caller made just now (following symlinks unless
        ``flags`` has ``O_NOFOLLOW``); it stands in for the cache's own check of an entry.
        """
        key = (path, flags)
        now = self._clock()
        if self.max_entries:
            gone = self._missing.get(key)
            if gone is not None:
                if now < gone:
                    raise FileNotFoundError(2, "No such file or directory", path)
                del self._missing[key]
            entry = self._entries.get(key)
            if entry is not None:
                if now < entry.expires:
                    current = known
                    if current is None:
                        try:
                            current = os.stat(path, follow_symlinks=not flags & os.O_NOFOLLOW)
                        except OSError:
                            current = None
                    if current is not None and _same_file(current, entry.stat):
                        self._entries.move_to_end(key)
                        entry.users += 1
                        self.hits += 1
                        return entry
                self._drop(key, entry)
        self.misses += 1
        try:
            fd = os.open(path, flags)
        except FileNotFoundError:
            if self.max_entries:
                self._remember_missing(key, now)
            raise
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise IsADirectoryError(21, "not a regular file", path)
        except BaseException:
            os.close(fd)
            raise
        entry = OpenFile(fd, st, path, now + self.max_age)
        entry.users = 1
        if self.max_entries:
            entry.cached = True
            self._entries[key] = entry
            while len(self._entries) > self.max_entries:
                old_key, old = next(iter(self._entries.items()))
                self._drop(old_key, old)
        return entry

    def contents(self, entry: OpenFile) -> bytes | None:
        """The whole file if it is small enough to answer from memory, else None.

        Read once per cache entry; None also when the file no longer has the size its stat
        promised (the caller's sendfile path then notices the truncation and reports it).
        """
        data = entry.data
        if data is not None:
            return data
        size = entry.stat.st_size
        if size > self.inline_limit or not entry.cached:
            return None
        data = os.pread(entry.fd, size, 0)
        if len(data) != size:
            return None
        entry.data = data
        return data

    def release(self, entry: OpenFile) -> None:
        """Done with ``entry``: its descriptor closes once unused and out of the cache."""
        entry.users -= 1
        if entry.users <= 0 and not entry.cached:
            os.close(entry.fd)

    def clear(self) -> None:
        """Drop every entry (descriptors in use close when their last user releases them)."""
        for key, entry in list(self._entries.items()):
            self._drop(key, entry)
        self._missing.clear()

    def __len__(self) -> int:
        return len(self._entries)

    def _drop(self, key: tuple[str, int], entry: OpenFile) -> None:
        del self._entries[key]
        entry.cached = False
        entry.data = None
        if entry.users <= 0:
            os.close(entry.fd)

    def _remember_missing(self, key: tuple[str, int], now: float) -> None:
        self._missing[key] = now + self.max_age
        self._missing.move_to_end(key)
        while len(self._missing) > self.max_entries:
            self._missing.popitem(last=False)
