"""Server settings in one place, each default with its reason."""

from __future__ import annotations

from dataclasses import dataclass, field

from wirespeed.io.flow import HIGH_WATER, LOW_WATER
from wirespeed.proto.http11 import Limits

__all__ = ["ServerConfig"]


@dataclass(slots=True)
class ServerConfig:
    """How a wirespeed server listens, times out and limits requests."""

    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    limits: Limits = field(default_factory=Limits)
    # Slowloris guard: a request head must arrive within this many seconds of its first byte
    # (and a new connection must send its first request within it). nginx's
    # client_header_timeout is 60 s; 10 s is uvicorn-era practice for a public server -> 408.
    header_timeout: float = 10.0
    # Idle keep-alive connections close after this long. uvicorn's default is 5 s; nginx 75 s.
    # Short keeps idle sockets (and their buffers) from piling up; clients reconnect cheaply.
    keepalive_timeout: float = 5.0
    # Longest pause between two pieces of a request body -> 408. nginx client_body_timeout: 60 s.
    body_timeout: float = 30.0
    # A client that accepts no bytes for this long while we have data for it is dropped, freeing
    # its buffers (progress is read from the kernel's count of acknowledged bytes, so a slow but
    # steady reader is kept). nginx send_timeout: 60 s.
    send_timeout: float = 60.0
    # After an error answer, read and discard what the client still sends for this long before
    # closing, so it receives the answer rather than a reset. nginx lingering_timeout: 5 s; 2 s
    # suffices on the LAN and bounds the cost of abusive clients.
    linger_timeout: float = 2.0
    # Seconds in-flight responses get to finish after SIGTERM before connections are cut.
    graceful_timeout: float = 30.0
    # Parsed requests waiting behind the one being answered before reading pauses. Browsers
    # never pipeline; tools that do (wrk scripts, redis-style clients) use depths up to 16.
    max_pipelined: int = 16
    # Request body bytes buffered ahead of a streaming consumer before reading pauses.
    body_high_water: int = 256 * 1024
    write_high_water: int = HIGH_WATER
    write_low_water: int = LOW_WATER
    # sendfile for file bodies; False forces the bounded-chunk copying path (for comparison,
    # and for filesystems or sockets where sendfile is not possible).
    zero_copy: bool = True
    # Adaptive response compression (codec/compress.py): on, because it only compresses when
    # the model expects the whole response to arrive sooner, so it is safe to leave on.
    compress: bool = True
    # The link rate (bits/s) one response can expect, which the compression model weighs CPU
    # against. 1 Gbit/s: a client on a fast LAN or a good fibre line; lower it for mobile users,
    # raise it to 10 Gbit/s and compression turns itself off for this CPU.
    link_rate: float = 1e9
    server_header: str = "wirespeed"
    access_log: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be 0-65535, got {self.port}")
        if self.workers < 1:
            raise ValueError(f"workers must be at least 1, got {self.workers}")
        for name in (
            "header_timeout",
            "keepalive_timeout",
            "body_timeout",
            "send_timeout",
            "linger_timeout",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name.replace('_', '-')} must be positive")
        if self.link_rate <= 0:
            raise ValueError("link-rate must be positive")
        if self.graceful_timeout < 0:
            raise ValueError("graceful-timeout must not be negative")

    @property
    def tick_interval(self) -> float:
        """How often deadlines are checked: a quarter of the shortest timeout, at most 1 s."""
        shortest = min(
            self.header_timeout,
            self.keepalive_timeout,
            self.body_timeout,
            self.send_timeout,
            self.linger_timeout,
        )
        return max(0.02, min(1.0, shortest / 4))
