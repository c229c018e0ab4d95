"""Turn a run's JSON lines into the article's two tables, charts and a Markdown report.

Theory of operation
-------------------
Everything here is a pure function of the records :mod:`runner` wrote to ``trials.jsonl`` (so a
report can be rebuilt from the file alone with ``--report-from``). :func:`summarize` groups the
trials by scenario and peer and takes, over rounds, the median with min and max of throughput and
transfer rate, the medians of the latency figures and of server CPU%, and the maximum peak RSS.
The ratio column divides a peer's median by the baseline's (wirespeed) median in the same
scenario, so it compares numbers taken in the same session, interleaved.

The layout follows the article: table 1 (small responses) has throughput, latency, CPU and
memory; table 2 (large payloads) has throughput and transfer rate, here split into body bytes/s
(the payload, identical across peers) and wire bytes/s (heads included). Rows are sorted by
throughput, fastest first; the loopback ceiling, when measured, heads table 2.

Units: GB/s is 10^9 bytes/s (network convention); memory is MiB (2^20 bytes, RSS convention);
CPU 100% is one core; latency is milliseconds, measured by the load tool from request sent to
response received, under closed-loop load (so it includes queueing at that concurrency).
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from wirespeed.bench.peers import BASELINE

CEILING = "loopback"


@dataclass(frozen=True)
class Stat:
    median: float
    low: float
    high: float

    @staticmethod
    def of(values: Iterable[float]) -> Stat:
        v = list(values)
        if not v:
            return Stat(0.0, 0.0, 0.0)
        return Stat(statistics.median(v), min(v), max(v))


@dataclass
class Summary:
    """One row: a peer in a scenario, over its rounds."""

    scenario: str
    peer: str
    title: str
    table: str
    trials: int
    rps: Stat
    body_Bps: Stat
    wire_Bps: Stat
    latency_ms: dict[str, float]
    server_cpu: float
    rss_peak: int
    idle_rss: int
    client_cpu: float
    noisy: int
    client_bound: int
    errors: int
    encoding: str = "identity"
    wire_body_bytes: int = 0
    ratio: float | None = None
    negotiated: bool = False  # the scenario's client sent Accept-Encoding
    notes: list[str] = field(default_factory=list)


def load(path: Path) -> list[dict[str, Any]]:
    """Records from a ``trials.jsonl`` file."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _by_type(records: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [r for r in records if r.get("type") == kind]


def summarize(records: list[dict[str, Any]]) -> list[Summary]:
    """One :class:`Summary` per (scenario, peer) that has trials, in scenario order."""
    scenarios = {r["name"]: r for r in _by_type(records, "scenario")}
    titles = {r["peer"]: r["title"] for r in _by_type(records, "peer")}
    titles.setdefault(CEILING, "loopback ceiling")
    ready = {(r["scenario"], r["peer"]): r for r in _by_type(records, "ready")}
    trials: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for t in _by_type(records, "trial"):
        trials[(t["scenario"], t["peer"])].append(t)
    order = list(scenarios)
    out: list[Summary] = []
    for (scenario, peer), ts in sorted(
        trials.items(), key=lambda kv: (_index(order, kv[0][0]), kv[0][1])
    ):
        facts = ready.get((scenario, peer), {})
        lat_keys = sorted({k for t in ts for k in t["latency_ms"]})
        out.append(
            Summary(
                scenario=scenario,
                peer=peer,
                title=titles.get(peer, peer),
                table=scenarios.get(scenario, {}).get("table", "requests"),
                trials=len(ts),
                rps=Stat.of(t["rps"] for t in ts),
                body_Bps=Stat.of(t["body_Bps"] for t in ts),
                wire_Bps=Stat.of(t["wire_Bps"] for t in ts),
                latency_ms={
                    k: statistics.median(t["latency_ms"].get(k, 0.0) for t in ts) for k in lat_keys
                },
                server_cpu=statistics.median(t["server_cpu"] for t in ts),
                rss_peak=max(t["rss_peak"] for t in ts),
                idle_rss=int(facts.get("idle_rss", 0)),
                client_cpu=statistics.median(t["client_cpu"] for t in ts),
                noisy=sum(1 for t in ts if t["noisy"]),
                client_bound=sum(1 for t in ts if t["client_bound"]),
                errors=sum(t["errors"] for t in ts),
                encoding=str(facts.get("content_encoding", "identity")),
                wire_body_bytes=int(facts.get("wire_body_bytes", 0)),
            )
        )
    baselines = {s.scenario: s for s in out if s.peer == BASELINE}
    negotiating = {
        name
        for name, r in scenarios.items()
        if any(h.lower().startswith("accept-encoding:") for h in r.get("headers", []))
    }
    for s in out:
        base = baselines.get(s.scenario)
        if base is not None and _headline(base) > 0:
            s.ratio = _headline(s) / _headline(base)
        if s.noisy:
            s.notes.append(f"noisy {s.noisy}/{s.trials}")
        if s.client_bound:
            s.notes.append(f"client-bound {s.client_bound}/{s.trials}")
        if s.errors:
            s.notes.append(f"{s.errors} errors")
        s.negotiated = s.scenario in negotiating
        if s.negotiated and s.encoding == "identity":
            s.notes.append("sent uncompressed")
    return out


def _headline(s: Summary) -> float:
    """The number a row is ranked and compared by: transfer rate or requests/s."""
    return s.body_Bps.median if s.table == "transfer" else s.rps.median


def _index(order: list[str], name: str) -> int:
    return order.index(name) if name in order else len(order)


def _rows(summaries: list[Summary], scenario: str) -> list[Summary]:
    rows = sorted((s for s in summaries if s.scenario == scenario), key=_headline, reverse=True)
    rows.sort(key=lambda s: s.peer != CEILING)  # stable: the ceiling first, the rest by speed
    return rows


# ------------------------------------------------------------------------------------------------
# formatting


def fmt_rate(x: float) -> str:
    return f"{x:,.0f}"


def fmt_ms(x: float) -> str:
    return f"{x:.2f} ms" if x >= 0.1 else f"{x * 1000:.0f} us"


def fmt_mib(x: float) -> str:
    return f"{x / 2**20:.1f} MiB"


def fmt_gbps(x: float) -> str:
    return f"{x / 1e9:.2f} GB/s"


def fmt_ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def fmt_size(n: int) -> str:
    return f"{n / 1024:.1f} KiB" if n >= 1024 else f"{n} B"


REQUEST_COLUMNS = [
    "Stack", "Throughput (req/s)", "min-max", "vs wirespeed", "Latency avg", "p50", "p99",
    "CPU", "Memory (peak RSS)", "Idle RSS", "Notes",
]  # fmt: skip
TRANSFER_COLUMNS = [
    "Stack", "Transfer rate (body)", "min-max", "Wire", "Throughput (req/s)", "vs wirespeed",
    "p99", "CPU", "Memory (peak RSS)", "Notes",
]  # fmt: skip


# Terminal headers: the Markdown keeps the article's long names, a terminal needs the width.
_SHORT = {
    "Throughput (req/s)": "req/s",
    "Transfer rate (body)": "body",
    "vs wirespeed": "vs ws",
    "Latency avg": "avg",
    "Memory (peak RSS)": "peak RSS",
    "Coding (body on the wire)": "coding",
    "Idle RSS": "idle RSS",
}


def table_rows(summaries: list[Summary], scenario: str) -> tuple[list[str], list[list[str]]]:
    """Column names and formatted cells of one scenario's table."""
    rows = _rows(summaries, scenario)
    if not rows:
        return [], []
    if rows[0].table == "transfer":
        return TRANSFER_COLUMNS, [
            [
                s.title,
                fmt_gbps(s.body_Bps.median),
                f"{s.body_Bps.low / 1e9:.2f}-{s.body_Bps.high / 1e9:.2f}",
                fmt_gbps(s.wire_Bps.median),
                fmt_rate(s.rps.median),
                fmt_ratio(s.ratio),
                fmt_ms(s.latency_ms.get("p99", 0.0)),
                f"{s.server_cpu:.0f}%",
                fmt_mib(s.rss_peak),
                "; ".join(s.notes),
            ]
            for s in rows
        ]
    compress = any(s.negotiated or s.encoding != "identity" for s in rows)
    columns = list(REQUEST_COLUMNS)
    if compress:
        columns.insert(-1, "Coding (body on the wire)")
    cells = []
    for s in rows:
        row = [
            s.title,
            fmt_rate(s.rps.median),
            f"{fmt_rate(s.rps.low)}-{fmt_rate(s.rps.high)}",
            fmt_ratio(s.ratio),
            fmt_ms(s.latency_ms.get("avg", 0.0)),
            fmt_ms(s.latency_ms.get("p50", 0.0)),
            fmt_ms(s.latency_ms.get("p99", 0.0)),
            f"{s.server_cpu:.0f}%",
            fmt_mib(s.rss_peak),
            fmt_mib(s.idle_rss),
            "; ".join(s.notes),
        ]
        if compress:
            row.insert(-1, f"{s.encoding} {fmt_size(s.wire_body_bytes)}")
        cells.append(row)
    return columns, cells


def _scenario_heading(records: list[dict[str, Any]], name: str) -> str:
    for r in _by_type(records, "scenario"):
        if r["name"] == name:
            tool = "wrk" if r["load"] == "wrk" else "block client"
            return f"{name}: {r['title']} ({tool}, {r['connections']} connections)"
    return name


def print_tables(records: list[dict[str, Any]], summaries: list[Summary], console: Console) -> None:
    """The tables on the terminal, one per scenario, in run order."""
    for scenario in dict.fromkeys(s.scenario for s in summaries):
        columns, cells = table_rows(summaries, scenario)
        table = Table(
            title=_scenario_heading(records, scenario),
            title_justify="left",
            box=box.SIMPLE_HEAD,
            pad_edge=False,
        )
        for i, c in enumerate(columns):
            table.add_column(
                _SHORT.get(c, c),
                justify="left" if i == 0 or c == "Notes" else "right",
                no_wrap=c != "Notes",
            )
        for row in cells:
            table.add_row(*(escape(cell) for cell in row))
        console.print(table)
    for peer, where, reason in skipped(records):
        console.print(f"[yellow]skipped[/] {escape(f'{peer} ({where}): {reason}')}")


def skipped(records: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """(peer, where, reason) per peer and reason: one line per peer, not per scenario."""
    grouped: dict[tuple[str, str], list[str]] = defaultdict(list)
    for skip in _by_type(records, "skip"):
        grouped[(skip["peer"], skip["reason"])].append(skip["scenario"])
    return [
        (peer, "all scenarios" if "*" in where else ", ".join(where), reason)
        for (peer, reason), where in grouped.items()
    ]


# ------------------------------------------------------------------------------------------------
# charts


def charts(summaries: list[Summary], out: Path) -> list[Path]:
    """PNG charts under ``out``; returns the files written (none without matplotlib)."""
    try:
        from matplotlib.figure import Figure  # noqa: PLC0415 (optional: the lab extra)
        from matplotlib.ticker import FuncFormatter  # noqa: PLC0415
    except ImportError:
        return []
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    requests = [x for x in dict.fromkeys(s.scenario for s in summaries if s.table == "requests")]
    transfer = [x for x in dict.fromkeys(s.scenario for s in summaries if s.table == "transfer")]

    def bars(
        ax: Any, rows: list[Summary], values: list[Stat], scale: float, unit: str, title: str
    ) -> None:
        labels = [s.title for s in rows][::-1]
        med = [v.median / scale for v in values][::-1]
        err = [
            [(v.median - v.low) / scale for v in values][::-1],
            [(v.high - v.median) / scale for v in values][::-1],
        ]
        colors = [_color(s.peer) for s in rows][::-1]
        ax.barh(labels, med, xerr=err, color=colors, capsize=3, ecolor="#333333")
        # Value labels right of the max whisker, so they never sit on a whisker.
        for y, (m, top) in enumerate(zip(med, [v.high / scale for v in values][::-1], strict=True)):
            ax.text(top, y, f"  {m:,.2f}" if scale > 1 else f"  {m:,.0f}", va="center", fontsize=8)
        ax.set_xlabel(unit)
        ax.set_title(title, fontsize=10, loc="left")
        ax.margins(x=0.18)

    if requests:
        fig = Figure(figsize=(9, 2.2 + 2.2 * len(requests)), layout="constrained")
        for i, name in enumerate(requests):
            rows = _rows(summaries, name)
            ax = fig.add_subplot(len(requests), 1, i + 1)
            bars(ax, rows, [s.rps for s in rows], 1, "requests/s (median, whiskers min-max)", name)
        written.append(_save(fig, out / "throughput.png"))

        fig = Figure(figsize=(9, 2.2 + 2.4 * len(requests)), layout="constrained")
        for i, name in enumerate(requests):
            rows = _rows(summaries, name)[::-1]
            ax = fig.add_subplot(len(requests), 1, i + 1)
            height = 0.8 / 4
            for j, pct in enumerate(("p50", "p75", "p90", "p99")):
                ys = [k + (j - 1.5) * height for k in range(len(rows))]
                ax.barh(
                    ys,
                    [max(s.latency_ms.get(pct, 0.0), 1e-3) for s in rows],
                    height=height,
                    label=pct,
                    color=("#9ecae1", "#6baed6", "#3182bd", "#08519c")[j],
                )
            ax.set_yticks(range(len(rows)), [s.title for s in rows])
            ax.set_xscale("log")
            # Plain numbers on the log axis ("20", not "2x10^1").
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
            ax.set_xlabel("latency, ms (log scale; median over rounds)")
            ax.set_title(name, fontsize=10, loc="left")
            top = max((max(s.latency_ms.values(), default=0.0) for s in rows), default=1.0)
            ax.set_xlim(right=max(top, 1e-3) * 1.6)
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        written.append(_save(fig, out / "latency.png"))

    if transfer:
        fig = Figure(figsize=(9, 2.2 + 2.2 * len(transfer)), layout="constrained")
        for i, name in enumerate(transfer):
            rows = _rows(summaries, name)
            ax = fig.add_subplot(len(transfer), 1, i + 1)
            bars(ax, rows, [s.body_Bps for s in rows], 1e9, "body GB/s (median, min-max)", name)
        written.append(_save(fig, out / "transfer.png"))

    names = requests + transfer
    if names:
        fig = Figure(figsize=(11, 1.8 + 2.0 * len(names)), layout="constrained")
        for i, name in enumerate(names):
            rows = _rows(summaries, name)[::-1]
            labels = [s.title for s in rows]
            colors = [_color(s.peer) for s in rows]
            ax = fig.add_subplot(len(names), 2, 2 * i + 1)
            ax.barh(labels, [s.server_cpu for s in rows], color=colors)
            ax.set_xlabel("server CPU % (100% = one core)")
            ax.set_title(name, fontsize=10, loc="left")
            ax = fig.add_subplot(len(names), 2, 2 * i + 2)
            ax.barh(labels, [s.rss_peak / 2**20 for s in rows], color=colors, label="peak")
            ax.barh(labels, [s.idle_rss / 2**20 for s in rows], color="#00000033", label="idle")
            ax.set_xlabel("RSS of the server tree, MiB")
            ax.legend(fontsize=7, loc="lower right")
        written.append(_save(fig, out / "cpu-memory.png"))
    return written


def _color(peer: str) -> str:
    if peer == BASELINE or peer.startswith(BASELINE):
        return "#e6550d"
    if peer == CEILING:
        return "#969696"
    return "#3182bd"


def _save(fig: Any, path: Path) -> Path:
    # 110 dpi: sharp on a README page, ~100 KiB per chart.
    fig.savefig(path, dpi=110)
    return path


# ------------------------------------------------------------------------------------------------
# Markdown


def markdown(
    records: list[dict[str, Any]], summaries: list[Summary], chart_files: list[Path]
) -> str:
    machine = next(iter(_by_type(records, "machine")), {})
    settings = next(iter(_by_type(records, "settings")), {})
    peers = _by_type(records, "peer")
    lines = ["# wirespeed bench", ""]
    if settings:
        lines += [
            f"Run {settings.get('started', '?')}: `{settings.get('command') or 'wirespeed bench'}`",
            "",
            f"{settings['rounds']} round(s) x {settings['duration']:g} s per trial after a "
            f"{settings['warmup']:g} s warm-up; rounds interleaved in shuffled order (seed "
            f"{settings['seed']}); server pinned to CPU {settings['server_cpu']}, load generator "
            f"to CPU {settings['load_cpu']}; one worker per server.",
            "",
        ]
    if machine:
        lines += [
            f"Machine: {machine['cpu_model']}, {machine['cpus']} CPUs, "
            f"{machine['memory_bytes'] / 2**30:.1f} GiB, Linux {machine['kernel']} "
            f"({machine['os']}), Python {machine['python']}, {machine['wrk']}, "
            f"loopback MTU {machine['lo_mtu']}, tcp_rmem {machine['tcp_rmem']}, "
            f"tcp_wmem {machine['tcp_wmem']}.",
            "",
        ]
    charts_by_name = {p.stem: p for p in chart_files}

    def chart(stem: str, alt: str) -> None:
        if stem in charts_by_name:
            lines.extend([f"![{alt}](charts/{charts_by_name[stem].name})", ""])

    for table, heading in (
        ("requests", "Requests/s, latency, CPU and memory (small responses)"),
        ("transfer", "Transfer rate (large payloads)"),
    ):
        names = list(dict.fromkeys(s.scenario for s in summaries if s.table == table))
        if not names:
            continue
        lines += [f"## {heading}", ""]
        for name in names:
            columns, cells = table_rows(summaries, name)
            lines += [f"### {_scenario_heading(records, name)}", ""]
            lines.append("| " + " | ".join(columns) + " |")
            lines.append("|" + "|".join(["---"] + ["---:"] * (len(columns) - 2) + ["---"]) + "|")
            lines += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in cells]
            lines.append("")
        if table == "requests":
            chart("throughput", "Throughput, median with min-max")
            chart("latency", "Latency percentiles")
        else:
            chart("transfer", "Transfer rate, median with min-max")
    if "cpu-memory" in charts_by_name:
        lines += ["## CPU and memory", ""]
        chart("cpu-memory", "Server CPU and memory")

    skips = skipped(records)
    if skips:
        lines += ["## Skipped", ""]
        lines += [f"- **{peer}** ({where}): {reason}" for peer, where, reason in skips]
        lines.append("")
    noted = [t for t in _by_type(records, "trial") if t["notes"]]
    notes = _by_type(records, "note")
    if noted or notes:
        trials = _by_type(records, "trial")
        noisy = [t for t in trials if t["noisy"]]
        lines += ["## Trial notes", ""]
        lines += [f"- {n['text']}" for n in notes]
        if noisy:
            others = statistics.median(t["other_cpu"] for t in noisy)
            lines.append(
                f"- {len(noisy)} of {len(trials)} trials ran while other processes used the "
                f"measured CPUs (median {others:.0f}% of one core): compare peers within this "
                "run, where rounds were interleaved, rather than with another run's numbers."
            )
        lines += ["", "<details><summary>Every noted trial</summary>", ""]
        lines += [
            f"- {t['scenario']} · {t['peer']} · round {t['round']}: {'; '.join(t['notes'])}"
            for t in noted
        ]
        lines += ["", "</details>", ""]
    if peers:
        lines += ["## Stacks", "", "| Stack | Version | How it runs |", "|---|---|---|"]
        lines += [f"| {p['title']} | {p['version']} | {p['how']} |" for p in peers]
        lines.append("")
    lines += [
        "## Method",
        "",
        "Each server is checked before it is measured (status, body length and SHA-256, "
        "keep-alive or close), so a broken server never produces a number. Throughput and "
        "transfer rate are medians over rounds with min-max; the ratio column divides by "
        "wirespeed's median in the same run. CPU is the server's whole process tree (100% = one "
        "core), memory its peak RSS during the trial (idle RSS: right after the check). Small "
        "responses are driven by wrk; large bodies by the lab's block client (C, 1 MiB reads), "
        "which counts body bytes apart from response heads"
        + (
            " and here discards them with splice(2) (--sink splice), copying nothing, so "
            "transfer rates show the servers' own cost per byte"
            if settings.get("sink") == "splice"
            else ""
        )
        + ". GB/s = 10^9 bytes/s. A trial is "
        "noted when other processes used more than 5% of a measured CPU, or when the load "
        "generator itself was near 100% CPU.",
        "",
    ]
    return "\n".join(lines)


def write(records: list[dict[str, Any]], out: Path, console: Console | None = None) -> Path:
    """Write summary.json, charts/ and report.md under ``out``; print tables; return report.md."""
    summaries = summarize(records)
    (out / "summary.json").write_text(
        json.dumps([asdict(s) for s in summaries], indent=1, default=str) + "\n"
    )
    files = charts(summaries, out / "charts")
    report = out / "report.md"
    report.write_text(markdown(records, summaries, files))
    if console is not None:
        print_tables(records, summaries, console)
    return report
