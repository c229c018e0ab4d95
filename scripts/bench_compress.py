"""Compression benchmark (issue 4): every codec and level against the adaptive choice.

Corpus: JSON (an API response), web (HTML with inline CSS and JS), log text (structured
application log), already-compressed video (an H.264 mp4 made by ffmpeg, sent as
``application/octet-stream`` so the sniffer has to find it) and random bytes, each at 16 KiB,
256 KiB and 2 MiB. The text generators differ from the calibration corpus on purpose: the
adaptive choice is tested on bytes it was not calibrated on.

For each body and each fixed choice (identity, or a coding at a level) the end-to-end time is
``compress + compressed bytes / link rate``, compress time measured for real (median of several
runs, this process pinned to one CPU). The adaptive choice is :func:`choose_compression` with this
machine's calibration and ``Accept-Encoding: gzip, deflate, br, zstd``; its time adds the
decision's own cost (median, probe included) to the measured compress time of what it picked.

Acceptance rules (issue 4), checked per body:

1. at 10 Gbit/s the adaptive choice is within 5% of identity;
2. at 100 Mbit/s it is within 10% of the best fixed choice for that body.

Exit status 1 if a rule is violated. Run::

    .venv/bin/python scripts/bench_compress.py            # ~1 min
    .venv/bin/python scripts/bench_compress.py --quick    # 16 KiB and 256 KiB only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import brotli
import zstandard

from wirespeed.codec.compress import (
    AVAILABLE,
    CompressionPolicy,
    Decision,
    calibration,
    choose_compression,
    compress,
)

KIB = 1024
MIB = 1024 * KIB
ACCEPT = "gzip, deflate, br, zstd"  # Chrome 123+
RATES = {"10G": 10e9, "1G": 1e9, "100M": 100e6}
# Levels in the table: the adaptive candidates plus gzip-9 (nginx users' "max") and zstd-12.
# deflate is gzip with another wrapper (same CPU, 12 bytes less) and is left out.
FIXED: list[tuple[str, int]] = [
    *(("zstd", lv) for lv in (1, 3, 6, 9, 12, 19)),
    *(("br", q) for q in (1, 4, 5, 11)),
    *(("gzip", lv) for lv in (1, 6, 9)),
]
# Too slow to run on 2 MiB bodies within the benchmark's time budget (~1-4 MB/s); at 100 Mbit/s
# they lose anyway (2 MiB costs 0.5-2 s to compress vs 168 ms to send uncompressed).
SLOW = {("zstd", 19), ("br", 11)}
SLOW_MAX_SIZE = 256 * KIB


# -- corpus ------------------------------------------------------------------------------------


def json_body(size: int, rnd: random.Random) -> bytes:
    out: list[bytes] = []
    total = 0
    while total < size:
        record = {
            "order_id": rnd.randrange(10**10),
            "customer": {"id": rnd.randrange(10**6), "country": rnd.choice(["DE", "FR", "US"])},
            "lines": [
                {"sku": f"SKU-{rnd.randrange(10**5):05d}", "qty": rnd.randrange(1, 9)}
                for _ in range(rnd.randrange(1, 4))
            ],
            "total": round(rnd.uniform(5, 900), 2),
            "status": rnd.choice(["paid", "shipped", "pending", "refunded"]),
        }
        item = json.dumps(record).encode()
        out.append(item)
        total += len(item) + 1
    return (b"[" + b",".join(out) + b"]")[:size]


def web_body(size: int, rnd: random.Random) -> bytes:
    css = ".nav{display:flex;gap:8px}.card{border:1px solid #ddd;padding:12px;margin:4px}\n"
    js = "function track(id,ev){navigator.sendBeacon('/t',JSON.stringify({id:id,ev:ev}))}\n"
    parts = [f"<!doctype html><html><head><style>{css * 4}</style><script>{js}</script></head>"]
    total = len(parts[0])
    while total < size:
        n = rnd.randrange(10**6)
        word = rnd.choice(["Lamp", "Desk", "Chair", "Shelf", "Rug", "Sofa"])
        part = (
            f'<div class="card" id="p{n}"><h3>{word} {n % 1000}</h3>'
            f"<p>{rnd.choice(['Solid oak', 'Steel frame', 'Hand made'])}, "
            f"{rnd.randrange(10, 200)} cm.</p><button onclick=\"track({n},'add')\">Add</button>"
            f"</div>\n"
        )
        parts.append(part)
        total += len(part)
    return "".join(parts).encode()[:size]


def log_body(size: int, rnd: random.Random) -> bytes:
    lines: list[str] = []
    total = 0
    while total < size:
        line = (
            f"2026-11-26T15:{rnd.randrange(60):02d}:{rnd.randrange(60):02d}."
            f"{rnd.randrange(10**6):06d}Z {rnd.choice(['INFO', 'INFO', 'INFO', 'WARN', 'ERROR'])} "
            f"svc=checkout trace={rnd.getrandbits(64):016x} user={rnd.randrange(10**6)} "
            f"msg={rnd.choice(['cart updated', 'payment ok', 'retrying upstream'])} "
            f"latency_ms={rnd.randrange(500)}\n"
        )
        lines.append(line)
        total += len(line)
    return "".join(lines).encode()[:size]


def video_body(size: int, rnd: random.Random) -> bytes:
    """An H.264 mp4 from ffmpeg (noise keeps x264 from shrinking it below 2 MiB), from its start."""
    if shutil.which("ffmpeg") is None:
        raise SystemExit("ffmpeg is needed for the video corpus")
    cmd = [
        *("ffmpeg", "-hide_banner", "-loglevel", "error", "-f", "lavfi"),
        *("-i", "testsrc2=size=640x360:rate=30,noise=alls=12:allf=t", "-t", "2"),
        *("-c:v", "libx264", "-preset", "ultrafast", "-crf", "23"),
        *("-movflags", "frag_keyframe+empty_moov", "-f", "mp4", "-"),
    ]
    data = subprocess.run(cmd, capture_output=True, check=True, timeout=120).stdout
    if len(data) < size:
        raise SystemExit(f"ffmpeg made {len(data)} bytes, fewer than {size}")
    return data[:size]


def random_body(size: int, rnd: random.Random) -> bytes:
    return rnd.randbytes(size)


CORPUS: dict[str, tuple[str, Callable[[int, random.Random], bytes]]] = {
    "json": ("application/json", json_body),
    "web": ("text/html", web_body),
    "log": ("text/plain", log_body),
    "video": ("application/octet-stream", video_body),
    "random": ("application/octet-stream", random_body),
}


# -- measurement ---------------------------------------------------------------------------------


def median_time(fn: Callable[[], object], size: int) -> float:
    """Median seconds of ``fn``: 31 runs for small bodies, 9 for 256 KiB, 5 for 2 MiB."""
    runs = 31 if size <= 64 * KIB else 9 if size <= 512 * KIB else 5
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@dataclass
class Result:
    kind: str
    size: int
    fixed: dict[tuple[str, int], tuple[int, float]]  # (coding, level) -> (bytes, seconds)
    adaptive: dict[
        str, tuple[Decision, float, int, float]
    ]  # rate -> (decision, decide s, bytes, s)


def measure(kind: str, body: bytes, content_type: str) -> Result:
    size = len(body)
    fixed: dict[tuple[str, int], tuple[int, float]] = {}
    for coding, level in FIXED:
        if coding not in AVAILABLE or ((coding, level) in SLOW and size > SLOW_MAX_SIZE):
            continue
        out = len(compress(body, coding, level))
        if (coding, level) in SLOW:  # one run: ~0.1-0.3 s each
            start = time.perf_counter()
            compress(body, coding, level)
            took = time.perf_counter() - start
        else:
            took = median_time(partial(compress, body, coding, level), size)
        fixed[coding, level] = (out, took)
    adaptive: dict[str, tuple[Decision, float, int, float]] = {}
    sample = body[:4096]
    for name, rate in RATES.items():
        policy = CompressionPolicy(link_rate=rate)

        def decide(p: CompressionPolicy = policy) -> Decision:
            return choose_compression(ACCEPT, content_type, size, sample=sample, policy=p)

        decision = decide()
        decide_s = median_time(decide, 0)
        if decision.coding is None:
            out, took = size, 0.0
        elif (decision.coding, decision.level) in fixed:
            out, took = fixed[decision.coding, decision.level]
        else:
            c, lv = decision.coding, decision.level
            out = len(compress(body, c, lv))
            took = median_time(partial(compress, body, c, lv), size)
        adaptive[name] = (decision, decide_s, out, took)
    return Result(kind, size, fixed, adaptive)


def end_to_end(out: int, took: float, rate: float) -> float:
    return took + out * 8 / rate


# -- report ----------------------------------------------------------------------------------------


def human(size: int) -> str:
    return f"{size // MIB} MiB" if size >= MIB else f"{size // KIB} KiB"


def machine() -> str:
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (
        f"{model}, {os.cpu_count()} CPUs, Linux {platform.release()}, Python "
        f"{platform.python_version()}, zstandard {zstandard.__version__} (libzstd "
        f"{'.'.join(map(str, zstandard.ZSTD_VERSION))}), brotli {brotli.__version__}, "
        f"zlib {zlib.ZLIB_RUNTIME_VERSION}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="16 KiB and 256 KiB bodies only")
    parser.add_argument("--cpu", type=int, default=1, help="CPU to pin to (default 1)")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})
    sizes = [16 * KIB, 256 * KIB] if args.quick else [16 * KIB, 256 * KIB, 2 * MIB]

    started = time.perf_counter()
    cal = calibration()
    print(f"# Compression benchmark\n\nMachine: {machine()}; pinned to CPU {args.cpu}.")
    print(
        f"\nCalibration ({cal.seconds * 1e3:.0f} ms, probe {cal.probe[0]}-{cal.probe[1]}, "
        f"reference saving {cal.reference_saving:.3f}):\n"
    )
    print("| coding | MB/s | saving | setup us |\n|---|---:|---:|---:|")
    for (coding, level), cost in cal.costs.items():
        print(
            f"| {coding}-{level} | {cost.speed / 1e6:.0f} | {cost.saving:.3f} | "
            f"{cost.setup * 1e6:.1f} |"
        )

    rnd = random.Random(2026)
    results = [
        measure(kind, make(size, rnd), content_type)
        for kind, (content_type, make) in CORPUS.items()
        for size in sizes
    ]

    # Table 1: ratio and speed per codec and level.
    print("\n## Ratio (compressed/original) and MB/s to compress, median of runs\n")
    names = [f"{c}-{lv}" for c, lv in FIXED if c in AVAILABLE]
    print("| body | " + " | ".join(names) + " |")
    print("|---|" + "---:|" * len(names))
    for r in results:
        cells = []
        for c, lv in FIXED:
            if c not in AVAILABLE:
                continue
            if (c, lv) not in r.fixed:
                cells.append("-")
                continue
            out, took = r.fixed[c, lv]
            cells.append(f"{out / r.size:.3f} @ {r.size / took / 1e6:.0f}")
        print(f"| {r.kind} {human(r.size)} | " + " | ".join(cells) + " |")

    # Table 2: the adaptive choice and the rules.
    print("\n## Adaptive choice vs identity and the best fixed choice (end-to-end ms)\n")
    print(
        "| body | rate | adaptive picked | decide us | adaptive ms | identity ms | "
        "best fixed | best ms | vs identity | vs best |"
    )
    print("|---|---|---|---:|---:|---:|---|---:|---:|---:|")
    violations = []
    for r in results:
        for rate_name in ("10G", "1G", "100M"):
            rate = RATES[rate_name]
            decision, decide_s, out, took = r.adaptive[rate_name]
            t_adaptive = decide_s + end_to_end(out, took, rate)
            t_identity = end_to_end(r.size, 0.0, rate)
            options = {"identity": t_identity} | {
                f"{c}-{lv}": end_to_end(o, t, rate) for (c, lv), (o, t) in r.fixed.items()
            }
            best_name = min(options, key=options.__getitem__)
            t_best = options[best_name]
            picked = (
                "identity" if decision.coding is None else f"{decision.coding}-{decision.level}"
            )
            vs_identity = t_adaptive / t_identity
            vs_best = t_adaptive / t_best
            print(
                f"| {r.kind} {human(r.size)} | {rate_name} | {picked} | {decide_s * 1e6:.1f} | "
                f"{t_adaptive * 1e3:.3f} | {t_identity * 1e3:.3f} | {best_name} | "
                f"{t_best * 1e3:.3f} | {vs_identity:.3f} | {vs_best:.3f} |"
            )
            if rate_name == "10G" and vs_identity > 1.05:
                violations.append(f"{r.kind} {human(r.size)} at 10G: {vs_identity:.3f} x identity")
            if rate_name == "100M" and vs_best > 1.10:
                violations.append(f"{r.kind} {human(r.size)} at 100M: {vs_best:.3f} x best fixed")

    print("\nReasons (100M): ")
    for r in results:
        print(f"- {r.kind} {human(r.size)}: {r.adaptive['100M'][0].reason}")
    print(
        "\nRule 1 (10 Gbit/s, adaptive <= 1.05 x identity, per body) and rule 2 (100 Mbit/s, "
        "adaptive <= 1.10 x best fixed, per body), decision cost included: "
        + ("both hold." if not violations else "VIOLATED:")
    )
    for v in violations:
        print(f"- {v}")
    print(f"\n({time.perf_counter() - started:.0f} s)")
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
