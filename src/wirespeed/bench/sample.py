"""Resource sampling during a trial: the server tree's CPU and memory, and everyone else's CPU.

Theory of operation
-------------------
**Server CPU%** is exact, not sampled: the sum of user+system time of every process in the
server's tree, read at the start and end of the trial (psutil), divided by wall time. 100% is one
core. A sampler thread also walks the tree every :data:`INTERVAL` so processes that appear during
the trial (a worker forked late) are included.

**Peak RSS** of the tree has two sources and the larger wins: the sampler's sum of per-process
RSS (which can miss a spike between two samples), and the kernel's own high-water mark
``VmHWM``, reset at the start of the trial by writing ``5`` to ``/proc/PID/clear_refs``
(Linux >= 4.0; silently unavailable elsewhere), which catches every spike of each process.

**Other CPU** answers "was the machine quiet?". From ``/proc/stat`` the lab takes the busy time
(user, nice, system) of the server CPU and the load CPU during the trial, and subtracts what the
server tree, the load generator and the lab itself used. What remains ran on our two CPUs without
being part of the experiment. Interrupt and softirq time (the loopback's packet processing) is
not counted as "other": it is the work being measured. Hypervisor steal is reported apart.
"""

from __future__ import annotations

import contextlib
import os
import resource
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from wirespeed.bench.process import tree

# Sampling period of RSS and tree membership. 100 ms: a few dozen samples in a short trial, and
# one psutil walk of a small tree costs ~0.2 ms, i.e. ~0.2% of the load CPU the lab lives on.
INTERVAL = 0.1
# A trial is "noisy" when other processes took more than this share of one CPU during it. 5% is
# about the jitter of tick-based accounting on a short trial; above it something else ran.
NOISE_THRESHOLD = 0.05

_TICK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class CpuTimes:
    """Busy and steal seconds of a set of CPUs, from /proc/stat."""

    busy: float
    steal: float

    @staticmethod
    def read(cpus: set[int]) -> CpuTimes:
        busy = steal = 0
        try:
            lines = Path("/proc/stat").read_text().splitlines()
        except OSError:
            return CpuTimes(0.0, 0.0)
        for line in lines:
            name, _, rest = line.partition(" ")
            if not name.startswith("cpu") or name == "cpu" or int(name[3:]) not in cpus:
                continue
            v = [int(x) for x in rest.split()]
            # user nice system idle iowait irq softirq steal ...
            busy += v[0] + v[1] + v[2]
            steal += v[7] if len(v) > 7 else 0
        return CpuTimes(busy / _TICK, steal / _TICK)


def tree_cpu_seconds(pid: int) -> float:
    total = 0.0
    for proc in tree(pid):
        with contextlib.suppress(psutil.Error):
            t = proc.cpu_times()
            total += t.user + t.system
    return total


def tree_rss(pid: int) -> int:
    total = 0
    for proc in tree(pid):
        with contextlib.suppress(psutil.Error):
            total += proc.memory_info().rss
    return total


def tree_detail(pid: int) -> list[dict[str, object]]:
    """pid, name and RSS of each process in the tree: a supervisor apart from its worker."""
    out: list[dict[str, object]] = []
    for proc in tree(pid):
        with contextlib.suppress(psutil.Error):
            out.append({"pid": proc.pid, "name": proc.name(), "rss": proc.memory_info().rss})
    return out


def _reset_hwm(pids: list[int]) -> bool:
    ok = True
    for pid in pids:
        try:
            Path(f"/proc/{pid}/clear_refs").write_text("5")
        except OSError:
            ok = False
    return ok


def _hwm(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Sample:
    """What a trial's sampler saw; CPU figures are percent of one core."""

    wall: float = 0.0
    server_cpu: float = 0.0
    rss_peak: int = 0
    rss_samples: list[int] = field(default_factory=list)
    other_cpu: float = 0.0
    steal: float = 0.0

    def noisy(self) -> bool:
        return self.other_cpu > NOISE_THRESHOLD * 100 or self.steal > NOISE_THRESHOLD * 100


class Sampler:
    """Sample the tree of ``pid`` between :meth:`start` and :meth:`stop`.

    ``cpus`` are the CPUs of the experiment (server and load). Pass the load generator's CPU
    seconds to :meth:`stop` so they are not counted as someone else's.
    """

    def __init__(self, pid: int, cpus: set[int]) -> None:
        self.pid = pid
        self.cpus = cpus
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-sampler", daemon=True)
        self._seen: dict[int, psutil.Process] = {}
        self._samples: list[int] = []

    def start(self) -> None:
        members = tree(self.pid)
        self._seen = {p.pid: p for p in members}
        self._hwm_ok = _reset_hwm(list(self._seen))
        self._t0 = time.monotonic()
        self._cpu0 = self._tree_cpu()
        self._stat0 = CpuTimes.read(self.cpus)
        self._self0 = _self_cpu()
        self._thread.start()

    def _tree_cpu(self) -> float:
        total = 0.0
        for proc in list(self._seen.values()):
            with contextlib.suppress(psutil.Error):
                t = proc.cpu_times()
                total += t.user + t.system
        return total

    def _run(self) -> None:
        while not self._stop.wait(INTERVAL):
            members = tree(self.pid)
            for proc in members:
                self._seen.setdefault(proc.pid, proc)
            rss = 0
            for proc in members:
                with contextlib.suppress(psutil.Error):
                    rss += proc.memory_info().rss
            self._samples.append(rss)

    def stop(self, load_cpu_seconds: float = 0.0) -> Sample:
        self._stop.set()
        self._thread.join()
        wall = time.monotonic() - self._t0
        server = self._tree_cpu() - self._cpu0
        stat = CpuTimes.read(self.cpus)
        own = _self_cpu() - self._self0
        other = (stat.busy - self._stat0.busy) - server - load_cpu_seconds - own
        hwm = sum(_hwm(pid) for pid in self._seen) if self._hwm_ok else 0
        peak = max([hwm, *self._samples]) if self._samples or hwm else tree_rss(self.pid)
        return Sample(
            wall=wall,
            server_cpu=100.0 * server / wall if wall > 0 else 0.0,
            rss_peak=peak,
            rss_samples=self._samples,
            other_cpu=max(0.0, 100.0 * other / wall) if wall > 0 else 0.0,
            steal=100.0 * (stat.steal - self._stat0.steal) / wall if wall > 0 else 0.0,
        )
