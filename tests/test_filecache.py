"""FileCache: reuse only while the path names the same bytes; bounded; no descriptor leaks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from wirespeed.io.filecache import FileCache

FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def fd_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def test_hit_reuses_the_descriptor(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_bytes(b"hello")
    cache = FileCache()
    first = cache.acquire(str(path), FLAGS)
    cache.release(first)
    second = cache.acquire(str(path), FLAGS)
    assert second is first
    assert (cache.hits, cache.misses) == (1, 1)
    assert os.pread(second.fd, 5, 0) == b"hello"
    cache.release(second)
    cache.clear()
    assert not fd_open(first.fd)


def test_replaced_file_is_reopened_never_served_as_the_old_one(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_bytes(b"old!!")
    cache = FileCache()
    old = cache.acquire(str(path), FLAGS)
    cache.release(old)
    replacement = tmp_path / "new.txt"
    replacement.write_bytes(b"new!!")  # same size: only the inode tells them apart
    os.replace(replacement, path)
    open_before = len(os.listdir("/proc/self/fd"))
    new = cache.acquire(str(path), FLAGS)
    assert new is not old
    assert os.pread(new.fd, 5, 0) == b"new!!"
    # The old descriptor was evicted and unused, so closed at once (the new one may even reuse
    # its number): the count of open descriptors did not grow.
    assert len(os.listdir("/proc/self/fd")) == open_before
    cache.release(new)
    cache.clear()


def test_truncated_file_is_reopened(tmp_path: Path) -> None:
    path = tmp_path / "a.bin"
    path.write_bytes(b"x" * 1000)
    cache = FileCache()
    before = cache.acquire(str(path), FLAGS)
    cache.release(before)
    with path.open("r+b") as f:
        f.truncate(10)
    after = cache.acquire(str(path), FLAGS)
    assert after is not before
    assert after.stat.st_size == 10
    cache.release(after)
    cache.clear()


def test_in_use_descriptor_survives_eviction_until_released(tmp_path: Path) -> None:
    paths = [tmp_path / f"{i}.txt" for i in range(3)]
    for p in paths:
        p.write_bytes(b"data")
    cache = FileCache(max_entries=2)
    busy = cache.acquire(str(paths[0]), FLAGS)  # not released yet
    for p in paths[1:]:
        cache.release(cache.acquire(str(p), FLAGS))
    assert len(cache) == 2  # paths[0] was evicted (least recently used) ...
    assert fd_open(busy.fd)  # ... but is still being sent
    assert os.pread(busy.fd, 4, 0) == b"data"
    cache.release(busy)
    assert not fd_open(busy.fd)
    cache.clear()


def test_entries_expire(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_bytes(b"a")
    clock = Clock()
    cache = FileCache(max_age=1.0, clock=clock)
    first = cache.acquire(str(path), FLAGS)
    cache.release(first)
    clock.now += 1.5
    open_before = len(os.listdir("/proc/self/fd"))
    second = cache.acquire(str(path), FLAGS)
    assert second is not first
    assert len(os.listdir("/proc/self/fd")) == open_before  # the expired one was closed
    cache.release(second)
    cache.clear()


def test_missing_paths_are_remembered_for_max_age(tmp_path: Path) -> None:
    path = tmp_path / "later.gz"
    clock = Clock()
    cache = FileCache(max_age=1.0, clock=clock)
    with pytest.raises(FileNotFoundError):
        cache.acquire(str(path), FLAGS)
    path.write_bytes(b"now here")
    with pytest.raises(FileNotFoundError):
        cache.acquire(str(path), FLAGS)  # the negative entry is still fresh
    clock.now += 1.5
    found = cache.acquire(str(path), FLAGS)
    assert found.stat.st_size == 8
    cache.release(found)
    cache.clear()


def test_directories_and_fifos_are_refused_without_leaking(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    cache = FileCache()
    before = set(os.listdir("/proc/self/fd"))
    for target in (tmp_path, fifo):
        with pytest.raises(IsADirectoryError):
            cache.acquire(str(target), FLAGS)
    assert set(os.listdir("/proc/self/fd")) == before
    assert len(cache) == 0


def test_disabled_cache_opens_and_closes_every_time(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_bytes(b"a")
    cache = FileCache(max_entries=0)
    opened = cache.acquire(str(path), FLAGS)
    cache.release(opened)
    assert not fd_open(opened.fd)
    assert len(cache) == 0


def test_small_contents_live_and_die_with_the_entry(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_bytes(b"first")
    cache = FileCache(inline_limit=8)
    entry = cache.acquire(str(path), FLAGS)
    data = cache.contents(entry)
    assert data == b"first"
    assert cache.contents(entry) is data  # read once per entry
    cache.release(entry)
    # Rewritten in place (same inode and size, later mtime): the entry and its bytes are gone.
    path.write_bytes(b"again")
    os.utime(path, ns=(entry.stat.st_atime_ns, entry.stat.st_mtime_ns + 1_000_000_000))
    fresh = cache.acquire(str(path), FLAGS)
    assert fresh is not entry
    assert entry.data is None
    assert cache.contents(fresh) == b"again"
    cache.release(fresh)
    cache.clear()


def test_contents_only_for_small_cached_files(tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(b"x" * 9)
    cache = FileCache(inline_limit=8)
    entry = cache.acquire(str(big), FLAGS)
    assert cache.contents(entry) is None  # over the limit: the caller sends it by sendfile
    cache.release(entry)
    uncached = FileCache(max_entries=0, inline_limit=8)
    small = tmp_path / "small.bin"
    small.write_bytes(b"tiny")
    entry = uncached.acquire(str(small), FLAGS)
    assert uncached.contents(entry) is None  # nothing outlives the request without a cache
    uncached.release(entry)
    cache.clear()


def test_contents_of_a_file_shorter_than_its_stat_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "a.bin"
    path.write_bytes(b"12345678")
    cache = FileCache(inline_limit=64)
    entry = cache.acquire(str(path), FLAGS)
    with path.open("r+b") as f:
        f.truncate(3)  # after the stat, before the read
    assert cache.contents(entry) is None
    assert entry.data is None
    cache.release(entry)
    cache.clear()


def test_a_known_stat_replaces_the_check(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_bytes(b"hello")
    cache = FileCache()
    first = cache.acquire(str(path), FLAGS)
    cache.release(first)
    st = os.stat(path)
    second = cache.acquire(str(path), FLAGS, st)
    assert second is first
    cache.release(second)
    # A known stat of another file (what the path names now, say) means the entry is stale.
    other = tmp_path / "b.txt"
    other.write_bytes(b"other")
    third = cache.acquire(str(path), FLAGS, os.stat(other))
    assert third is not first
    assert (cache.hits, cache.misses) == (1, 2)
    cache.release(third)
    cache.clear()
