"""Socket tuning against the real kernel: real sockets on loopback, no mocks."""

from __future__ import annotations

import argparse
import errno
import logging
import resource
import select
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from wirespeed.io.tuning import (
    SocketOptions,
    add_arguments,
    apply_connection_options,
    apply_listener_options,
    connection_option_names,
    create_listener,
    from_namespace,
    kernel_limits,
    listen_queue,
    open_listener,
    read_back,
    recommendations,
    tune_main,
)

Track = Callable[[socket.socket], socket.socket]

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux behaviour")


def _sysctl(path: str) -> int | None:
    try:
        return int(Path("/proc/sys", path).read_text())
    except (OSError, ValueError):
        return None


@pytest.fixture
def track() -> Iterator[Track]:
    """Register sockets to close at the end of the test (unclosed ones are ResourceWarnings)."""
    opened: list[socket.socket] = []

    def add(sock: socket.socket) -> socket.socket:
        opened.append(sock)
        return sock

    yield add
    for sock in opened:
        sock.close()


def _accept(listener: socket.socket, timeout: float = 2.0) -> socket.socket:
    readable, _, _ = select.select([listener], [], [], timeout)
    assert readable, "no connection to accept"
    conn, _ = listener.accept()
    return conn


def _connect_and_accept(listener: socket.socket, track: Track) -> socket.socket:
    track(socket.create_connection(listener.getsockname()[:2], timeout=2.0))
    return track(_accept(listener))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wirespeed")
    add_arguments(parser)
    return parser


# --- defaults -------------------------------------------------------------------------------


def test_default_backlog_is_at_least_nginx_511() -> None:
    assert SocketOptions().backlog >= 511


@linux_only
def test_default_listener_gets_backlog_capped_only_by_somaxconn(track: Track) -> None:
    sock, applied = open_listener("127.0.0.1", 0, SocketOptions())
    track(sock)
    somaxconn = _sysctl("net/core/somaxconn")
    assert somaxconn is not None
    assert applied.effective["backlog"] == min(SocketOptions().backlog, somaxconn)
    assert applied.warnings == []


def test_listener_is_non_blocking_and_bound(track: Track) -> None:
    sock = track(create_listener("127.0.0.1", 0, SocketOptions()))
    assert sock.getblocking() is False
    assert sock.getsockname()[1] != 0


# --- read-back ------------------------------------------------------------------------------


@linux_only
def test_buffer_read_back_is_the_kernels_doubling(track: Track) -> None:
    wmem_max, rmem_max = _sysctl("net/core/wmem_max"), _sysctl("net/core/rmem_max")
    if not wmem_max or not rmem_max or min(wmem_max, rmem_max) < 65536:
        pytest.skip("buffer caps below 64 KiB")
    opts = SocketOptions(sndbuf=65536, rcvbuf=65536)
    sock, applied = open_listener("127.0.0.1", 0, opts)
    track(sock)
    assert applied.requested["sndbuf"] == 65536
    assert applied.effective["sndbuf"] == 131072
    assert applied.effective["rcvbuf"] == 131072
    assert applied.warnings == []  # doubling is normal, not a warning


@linux_only
def test_buffer_above_sysctl_cap_is_capped_before_doubling_and_warned(track: Track) -> None:
    wmem_max = _sysctl("net/core/wmem_max")
    if wmem_max is None:
        pytest.skip("no net.core.wmem_max")
    sock, applied = open_listener("127.0.0.1", 0, SocketOptions(sndbuf=wmem_max + 4096))
    track(sock)
    assert applied.effective["sndbuf"] == 2 * wmem_max
    [warning] = applied.warnings
    assert warning.startswith("sndbuf:") and "net.core.wmem_max" in warning


@linux_only
def test_tiny_buffer_is_raised_to_the_kernel_minimum_and_warned(track: Track) -> None:
    sock, applied = open_listener("127.0.0.1", 0, SocketOptions(sndbuf=1))
    track(sock)
    effective = applied.effective["sndbuf"]
    assert isinstance(effective, int) and effective > 2
    assert any("minimum" in w for w in applied.warnings)


@linux_only
def test_defer_accept_reads_back_rounded_up_without_warning(track: Track) -> None:
    sock, applied = open_listener("127.0.0.1", 0, SocketOptions(defer_accept=30))
    track(sock)
    effective = applied.effective["defer_accept"]
    assert isinstance(effective, int) and effective >= 30
    assert applied.warnings == []


def test_read_back_of_a_plain_socket_has_every_key(track: Track) -> None:
    sock = track(socket.socket())
    values = read_back(sock)
    expected = {f for f in SocketOptions.__dataclass_fields__} | {"congestion"}
    assert set(values) == expected
    assert values["backlog"] is None  # not listening
    assert values["nodelay"] is False


@linux_only
def test_listen_queue_counts_connections_nobody_accepted(track: Track) -> None:
    listener = track(create_listener("127.0.0.1", 0, SocketOptions(backlog=600)))
    for _ in range(2):
        track(socket.create_connection(listener.getsockname(), timeout=2.0))
    deadline = time.monotonic() + 2.0
    while (queue := listen_queue(listener)) is not None and queue[0] < 2:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert queue is not None
    assert queue == (2, min(600, _sysctl("net/core/somaxconn") or 600))


@linux_only
def test_apply_listener_options_resizes_a_listening_sockets_backlog(track: Track) -> None:
    sock = track(socket.socket())
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    applied = apply_listener_options(sock, SocketOptions(backlog=300, keepidle=77))
    assert applied.effective["backlog"] == 300
    assert applied.effective["keepidle"] == 77


# --- listeners ------------------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(socket, "SO_REUSEPORT"), reason="no SO_REUSEPORT")
def test_reuseport_lets_two_listeners_bind_the_same_port(track: Track) -> None:
    opts = SocketOptions(reuseport=True)
    first = track(create_listener("127.0.0.1", 0, opts))
    port = first.getsockname()[1]
    second = track(create_listener("127.0.0.1", port, opts))
    assert second.getsockname()[1] == port
    assert read_back(second)["reuseport"] is True


def test_port_in_use_raises_eaddrinuse_with_a_one_line_message(track: Track) -> None:
    first = track(create_listener("127.0.0.1", 0, SocketOptions()))
    port = first.getsockname()[1]
    with pytest.raises(OSError) as caught:
        create_listener("127.0.0.1", port, SocketOptions())
    assert caught.value.errno == errno.EADDRINUSE
    message = str(caught.value)
    assert f"127.0.0.1:{port}" in message and "\n" not in message


def test_address_not_on_this_host_raises_oserror_with_errno() -> None:
    # 192.0.2.1 is TEST-NET-1 (RFC 5737): numeric, so no DNS, and never a local address.
    with pytest.raises(OSError) as caught:
        create_listener("192.0.2.1", 0, SocketOptions())
    assert caught.value.errno == errno.EADDRNOTAVAIL


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6")
def test_dual_stack_listener_accepts_ipv4(track: Track) -> None:
    listener = track(create_listener("::", 0, SocketOptions()))
    assert listener.family == socket.AF_INET6
    port = listener.getsockname()[1]
    track(socket.create_connection(("127.0.0.1", port), timeout=2.0))
    conn = track(_accept(listener))
    assert conn.getpeername()[0] == "::ffff:127.0.0.1"


def test_capped_options_are_logged_by_create_listener(
    track: Track, caplog: pytest.LogCaptureFixture
) -> None:
    somaxconn = _sysctl("net/core/somaxconn")
    if somaxconn is None or somaxconn >= 2**31 - 1:
        pytest.skip("no somaxconn cap to exceed")
    with caplog.at_level(logging.WARNING, logger="wirespeed.io.tuning"):
        track(create_listener("127.0.0.1", 0, SocketOptions(backlog=somaxconn + 1)))
    assert any("net.core.somaxconn" in r.getMessage() for r in caplog.records)


# --- accepted sockets -----------------------------------------------------------------------


def test_accepted_socket_has_nodelay_and_keepalive_effective(track: Track) -> None:
    opts = SocketOptions(nodelay=True, keepalive=True, keepidle=61, keepintvl=11, keepcnt=4)
    listener = track(create_listener("127.0.0.1", 0, opts))
    conn = _connect_and_accept(listener, track)
    apply_connection_options(conn, opts)
    values = read_back(conn)
    assert values["nodelay"] is True
    assert values["keepalive"] is True
    assert (values["keepidle"], values["keepintvl"], values["keepcnt"]) == (61, 11, 4)


@linux_only
def test_linux_inheritance(track: Track) -> None:
    """The facts apply_connection_options relies on to skip syscalls on the hot path."""
    opts = SocketOptions(
        nodelay=True,
        sndbuf=65536,
        rcvbuf=65536,
        keepalive=True,
        keepidle=61,
        keepintvl=11,
        keepcnt=4,
        notsent_lowat=16384,
        fastopen=8,
        defer_accept=1,
    )
    listener = track(create_listener("127.0.0.1", 0, opts))
    client = track(socket.create_connection(listener.getsockname(), timeout=2.0))
    client.sendall(b"x")  # past TCP_DEFER_ACCEPT
    conn = track(_accept(listener))  # no apply_connection_options: what is inherited?
    on_listener, on_conn = read_back(listener), read_back(conn)
    for name in ("nodelay", "sndbuf", "rcvbuf", "keepalive", "keepidle", "keepintvl"):
        assert on_conn[name] == on_listener[name], name
    assert on_conn["keepcnt"] == 4
    assert on_conn["notsent_lowat"] == 16384
    # Listener-only options read 0 on the accepted socket.
    assert on_listener["fastopen"] == 8 and on_conn["fastopen"] == 0
    assert on_listener["defer_accept"] and on_conn["defer_accept"] == 0


@linux_only
def test_quickack_is_applied_per_connection(track: Track) -> None:
    listener = track(create_listener("127.0.0.1", 0, SocketOptions(quickack=True)))
    conn = _connect_and_accept(listener, track)
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 0)  # as if traffic had left it
    assert read_back(conn)["quickack"] is False
    apply_connection_options(conn, SocketOptions(quickack=True))
    assert read_back(conn)["quickack"] is True


@linux_only
def test_tuned_listener_needs_no_per_connection_syscalls_by_default() -> None:
    assert connection_option_names(SocketOptions()) == []
    assert connection_option_names(SocketOptions(quickack=True)) == ["quickack"]
    untuned = connection_option_names(SocketOptions(), inherited=False)
    assert {"nodelay", "keepalive", "keepidle", "keepintvl", "keepcnt"} <= set(untuned)
    assert "fastopen" not in untuned and "reuseport" not in untuned
    no_keepalive = connection_option_names(SocketOptions(keepalive=False), inherited=False)
    assert "keepidle" not in no_keepalive


def test_untuned_listener_gets_everything_applied_per_connection(track: Track) -> None:
    listener = track(socket.socket())
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    conn = _connect_and_accept(listener, track)
    opts = SocketOptions(keepidle=62, keepintvl=12, keepcnt=5)
    apply_connection_options(conn, opts, inherited=False)
    values = read_back(conn)
    assert values["nodelay"] is True and values["keepalive"] is True
    assert (values["keepidle"], values["keepintvl"], values["keepcnt"]) == (62, 12, 5)


def test_connection_options_never_raise_on_a_closed_peer(track: Track) -> None:
    listener = track(create_listener("127.0.0.1", 0, SocketOptions()))
    conn = _connect_and_accept(listener, track)
    conn.shutdown(socket.SHUT_RDWR)
    apply_connection_options(conn, SocketOptions(quickack=True), inherited=False)


# --- command line ---------------------------------------------------------------------------


def test_cli_defaults_are_the_dataclass_defaults() -> None:
    assert from_namespace(_parser().parse_args([])) == SocketOptions()


def test_cli_values_round_trip() -> None:
    ns = _parser().parse_args(
        [
            "--no-nodelay",
            "--sndbuf",
            "256K",
            "--rcvbuf",
            "1M",
            "--fastopen",
            "0",
            "--no-keepalive",
            "--keepcnt",
            "3",
            "--reuseport",
            "--backlog",
            "1024",
            "--defer-accept",
            "30",
            "--notsent-lowat",
            "16384",
            "--quickack",
        ]
    )
    assert from_namespace(ns) == SocketOptions(
        nodelay=False,
        sndbuf=256 * 1024,
        rcvbuf=1024 * 1024,
        fastopen=None,
        keepalive=False,
        keepcnt=3,
        reuseport=True,
        backlog=1024,
        defer_accept=30,
        notsent_lowat=16384,
        quickack=True,
    )


def test_from_namespace_keeps_defaults_for_missing_flags() -> None:
    assert from_namespace(argparse.Namespace(backlog=600)) == SocketOptions(backlog=600)


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--sndbuf", "-1"),
        ("--sndbuf", "0"),
        ("--sndbuf", "lots"),
        ("--rcvbuf", "3T"),
        ("--fastopen", "-3"),
        ("--keepidle", "0"),
        ("--keepidle", "40000"),
        ("--keepintvl", "1.5"),
        ("--keepcnt", "128"),
        ("--backlog", "0"),
        ("--defer-accept", "-1"),
        ("--notsent-lowat", "4G"),
    ],
)
def test_cli_rejects_bad_values_with_one_line_and_exit_2(
    flag: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        _parser().parse_args([flag, value])
    assert caught.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith(f"wirespeed: error: argument {flag}: invalid ")
    assert repr(value) in error


@pytest.mark.parametrize(
    "kwargs",
    [{"sndbuf": -1}, {"keepcnt": 128}, {"backlog": 0}, {"keepidle": 1.5}, {"fastopen": -1}],
)
def test_socket_options_reject_out_of_range_values(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        SocketOptions(**kwargs)  # type: ignore[arg-type]


def test_zero_means_off_and_is_normalised() -> None:
    assert SocketOptions(fastopen=0, defer_accept=0, notsent_lowat=0) == SocketOptions()


# --- kernel limits and recommendations ------------------------------------------------------


@linux_only
def test_kernel_limits_match_proc_and_getrlimit() -> None:
    limits = kernel_limits()
    assert limits["somaxconn"] == _sysctl("net/core/somaxconn")
    assert limits["wmem_max"] == _sysctl("net/core/wmem_max")
    assert limits["rmem_max"] == _sysctl("net/core/rmem_max")
    assert limits["tcp_fastopen"] == _sysctl("net/ipv4/tcp_fastopen")
    assert isinstance(limits["tcp_congestion_control"], str)
    ports = limits["ip_local_port_range"]
    assert ports is not None and ports[0] <= ports[1]
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert limits["nofile_soft"] in (soft, "unlimited")


def test_recommendations_fire_for_each_undercut_limit() -> None:
    opts = SocketOptions(backlog=8192, sndbuf=8 << 20, rcvbuf=16 << 20, fastopen=256)
    limits = {
        "somaxconn": 4096,
        "wmem_max": 4 << 20,
        "rmem_max": 4 << 20,
        "tcp_fastopen": 1,
        "nofile_soft": 1024,
        "nofile_hard": 1048576,
    }
    lines = recommendations(opts, limits)
    assert len(lines) == 5
    assert all("\n" not in line for line in lines)
    text = "\n".join(lines)
    assert "sysctl -w net.core.somaxconn=8192" in text
    assert f"sysctl -w net.core.wmem_max={8 << 20}" in text
    assert f"sysctl -w net.core.rmem_max={16 << 20}" in text
    assert "sysctl -w net.ipv4.tcp_fastopen=3" in text
    assert "ulimit -n 65536" in text


def test_recommendations_mention_the_hard_limit_when_it_is_too_low() -> None:
    [line] = recommendations(SocketOptions(), {"nofile_soft": 1024, "nofile_hard": 4096})
    assert "raise the hard limit 4096" in line


@pytest.mark.parametrize(
    "limits",
    [
        {},
        dict.fromkeys(("somaxconn", "wmem_max", "rmem_max", "tcp_fastopen", "nofile_soft")),
        {
            "somaxconn": 4096,
            "wmem_max": 4 << 20,
            "rmem_max": 4 << 20,
            "tcp_fastopen": 3,
            "nofile_soft": "unlimited",
        },
    ],
    ids=["missing", "unknown", "generous"],
)
def test_recommendations_stay_quiet_when_nothing_undercuts(limits: dict[str, object]) -> None:
    opts = SocketOptions(backlog=4096, sndbuf=4 << 20, rcvbuf=1 << 20, fastopen=256)
    assert recommendations(opts, limits) == []


# --- wirespeed tune -------------------------------------------------------------------------


@pytest.mark.parametrize("use_rich", [True, False], ids=["rich", "plain"])
def test_tune_prints_options_next_to_kernel_limits(
    use_rich: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    ns = _parser().parse_args(
        ["--backlog", str(2**31 - 1), "--sndbuf", "64K", "--defer-accept", "5"]
    )
    assert tune_main(ns, use_rich=use_rich) == 0
    out = capsys.readouterr().out
    for name in SocketOptions.__dataclass_fields__:
        assert name in out
    for header in ("requested", "effective (listener)", "effective (accepted)"):
        assert header in out
    assert "no connection within" not in out  # the accepted column was filled
    if sys.platform.startswith("linux"):
        limits = kernel_limits()
        assert f"somaxconn {limits['somaxconn']}" in out
        assert f"wmem_max {limits['wmem_max']}" in out
        assert "open files" in out and "local port range" in out
        assert "131072" in out  # 64 KiB sndbuf, doubled
        assert f"sysctl -w net.core.somaxconn={2**31 - 1}" in out  # backlog undercut


def test_tune_works_without_any_tuning_flags(capsys: pytest.CaptureFixture[str]) -> None:
    assert tune_main(argparse.Namespace(), use_rich=False) == 0
    assert "recommendations" in capsys.readouterr().out
