"""Turns the raw lines of bench/run into a JSON result and
docs/benchmarks.md.

    report.py RAW_DIR RESULT_JSON MARKDOWN COMMAND

Each round is one run of every benchmark in one placement. The report
gives, per benchmark and placement, the median over rounds of p50, p99 and
calls per second, and ratios to the floor taken within each round, then
their median: the machine is shared and noisy, so ratios inside a round
are what compare fairly.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import subprocess
import sys

FLOOR = "raw socketpair echo (floor)"
POOL = "snakepit Pool, msgpack bytes in and out"
MP = "multiprocessing.Pool.apply"


def load(raw_dir: str) -> dict:
    rounds: dict = {}
    for name in sorted(os.listdir(raw_dir)):
        stem = name.rsplit(".", 1)[0]
        round_name, placement = stem.split("_", 1)
        with open(os.path.join(raw_dir, name)) as f:
            rows = [json.loads(line) for line in f if line.strip()]
        rounds.setdefault(placement, {})[round_name] = {
            r["name"]: r for r in rows}
    return rounds


def summarise(rounds: dict) -> dict:
    summary: dict = {}
    for placement, by_round in rounds.items():
        names = list(next(iter(by_round.values())).keys())
        cells = {}
        for name in names:
            rows = [r[name] for r in by_round.values() if name in r]
            ratios = [r[name]["p50_us"] / r[FLOOR]["p50_us"]
                      for r in by_round.values() if name in r]
            cells[name] = {
                "p50_us": statistics.median(x["p50_us"] for x in rows),
                "p99_us": statistics.median(x["p99_us"] for x in rows),
                "calls_per_s": statistics.median(
                    x["calls_per_s"] for x in rows),
                "p50_vs_floor": statistics.median(ratios),
                "rounds": len(rows),
            }
        summary[placement] = cells
    return summary


def machine() -> str:
    try:
        model = subprocess.run(
            ["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"],
            capture_output=True, text=True).stdout.strip()
    except OSError:
        model = "unknown"
    return (f"{os.cpu_count()} vCPU ({model}), Linux "
            f"{platform.release()}, Python {platform.python_version()}")


def ratio_line(cells: dict, a: str, b: str) -> str:
    return f"{cells[b]['p50_us'] / cells[a]['p50_us']:.1f}×"


def markdown(summary: dict, command: str, when: str) -> str:
    lines = [
        "# Benchmarks",
        "",
        f"Measured {when} on {machine()}, by `{command}`.",
        "Regenerate with `bench/run` (full) or `bench/run --quick`.",
        "",
        "One small call in flight: 100 bytes in, 100 bytes out, echoed by",
        "a Python function. *same* pins the host and the worker to one CPU",
        "(`taskset -c 0`); *default* leaves placement to the scheduler. On",
        "this VM a wakeup across vCPUs costs about 30 µs",
        "(`../shared/notes/performance-floor.md`), which dominates every",
        "blocking transport in *default*. Figures are medians over rounds;",
        "“× floor” is the median of per-round ratios to the raw socketpair",
        "echo measured in the same round.",
        "",
    ]
    for placement in ("same", "default"):
        cells = summary.get(placement)
        if not cells:
            continue
        lines += [f"## Small call, placement: {placement}", "",
                  "| what | p50 µs | p99 µs | calls/s | × floor |",
                  "|---|---|---|---|---|"]
        for name, c in cells.items():
            lines.append(f"| {name} | {c['p50_us']:.1f} | {c['p99_us']:.1f}"
                         f" | {c['calls_per_s']:,.0f} |"
                         f" {c['p50_vs_floor']:.2f} |")
        lines.append("")
    same = summary.get("same", {})
    if POOL in same and MP in same:
        pool = same[POOL]
        mp = same[MP]
        target_ok = pool["p50_vs_floor"] <= 1.5
        lines += [
            "## Targets",
            "",
            "| target | measured (same CPU) | met |",
            "|---|---|---|",
            f"| Pool p50 within 1.5× the raw floor | "
            f"{pool['p50_vs_floor']:.2f}× | "
            f"{'yes' if target_ok else 'no, by ' + format(pool['p50_vs_floor'] / 1.5, '.2f') + '×'} |",
            f"| Pool p50 at least 3× lower than multiprocessing.Pool.apply"
            f" | {mp['p50_us'] / pool['p50_us']:.1f}× lower | "
            f"{'yes' if mp['p50_us'] >= 3 * pool['p50_us'] else 'no'} |",
            "",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    raw_dir, result_path, md_path, command = sys.argv[1:5]
    rounds = load(raw_dir)
    summary = summarise(rounds)
    when = datetime.datetime.now(datetime.timezone.utc).strftime(
        "%Y-%m-%d %H:%M UTC")
    with open(result_path, "w") as f:
        json.dump({"when": when, "command": command, "machine": machine(),
                   "summary": summary, "rounds": rounds}, f, indent=1)
    with open(md_path, "w") as f:
        f.write(markdown(summary, command, when))


if __name__ == "__main__":
    main()
