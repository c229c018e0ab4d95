"""A description of the machine a run measured on, for the JSON lines and the report.

Numbers from a benchmark mean little without the box: CPU model and count, kernel, memory, the
loopback MTU and TCP buffer limits (which bound loopback transfer rates), the CPU frequency
governor when the kernel exposes one, and the versions of Python and the load tools. Everything
is read from /proc and /sys, cheaply, and a missing file gives "?" rather than an error.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

from wirespeed.bench.load import compiler, wrk_version


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return "?"


def cpu_model() -> str:
    for line in _read("/proc/cpuinfo").splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def memory_total() -> int:
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    return 0


def os_name() -> str:
    for line in _read("/etc/os-release").splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip('"')
    return platform.system()


def describe() -> dict[str, object]:
    """The machine as a flat JSON-able dict."""
    cc = compiler()
    return {
        "cpu_model": cpu_model(),
        "cpus": os.cpu_count(),
        "cpus_usable": sorted(os.sched_getaffinity(0)),
        "governor": _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
        "memory_bytes": memory_total(),
        "kernel": platform.release(),
        "os": os_name(),
        "python": platform.python_version(),
        "lo_mtu": _read("/sys/class/net/lo/mtu"),
        "tcp_rmem": " ".join(_read("/proc/sys/net/ipv4/tcp_rmem").split()),
        "tcp_wmem": " ".join(_read("/proc/sys/net/ipv4/tcp_wmem").split()),
        "wrk": wrk_version(),
        "cc": Path(cc).name if cc else "none",
    }
