"""Turns the result lines of bench/run into a JSON result file,
docs/benchmarks.md and the plots beside it.

    report.py --raw DIR --json FILE --markdown FILE --command TEXT
              [--seconds N]
    report.py --again FILE --markdown FILE [--json FILE]

The second form writes the report again from a result file's raw lines,
with its original date and command, and the result file too when --json
names it: for a change in how figures are summarised or worded, never in
what was measured.

DIR holds one file per round and placement, `round<N>_<placement>.jsonl`,
each line a result (bench/bench_util.h); summary.py says how they are
summarised. The JSON file keeps the summary, the targets and every raw
line, so that bench/compare can set two runs side by side.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys

import report_plots
import report_text
import summary as results


def machine() -> str:
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (f"{os.cpu_count()} vCPU ({model}), Linux "
            f"{platform.release()}, Python {platform.python_version()}")


def load_average() -> str:
    """The 1, 5 and 15-minute load averages now, as /proc shows them."""
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return ""


def commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True,
            text=True, timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--raw")
    parser.add_argument("--json")
    parser.add_argument("--again")
    parser.add_argument("--markdown", required=True)
    parser.add_argument("--command", default="")
    parser.add_argument("--seconds", type=int, default=0)
    parser.add_argument("--load-at-start", default="")
    args = parser.parse_args()
    if not args.again and not (args.raw and args.json):
        parser.error("give --raw and --json, or --again")
    return args


def write(meta: dict, rounds: dict, json_path: str, md_path: str) -> None:
    summary = results.summarise(rounds)
    targets = report_text.targets(rounds, summary)
    if json_path:
        with open(json_path, "w") as f:
            # Compact: programs read it (bench/compare), and it is half
            # the size of an indented file.
            json.dump({**meta, "summary": summary, "targets": targets,
                       "raw": rounds}, f, separators=(",", ":"))
    out_dir = os.path.dirname(os.path.abspath(md_path))
    plots = report_plots.plots(summary, out_dir)
    with open(md_path, "w") as f:
        f.write(report_text.markdown(meta, summary, targets, plots))
    # The verdicts on the terminal too, so that a run need not be opened
    # to see which targets it met.
    for t in targets:
        mark = {True: "met", False: "MISSED", None: "not measured"}[
            t.get("met")]
        print(f"bench: target {mark}: {t['target']}: {t['verdict']}",
              file=sys.stderr)


def main() -> None:
    args = parse()
    if args.again:
        with open(args.again) as f:
            old = json.load(f)
        meta = {k: v for k, v in old.items()
                if k not in ("summary", "targets", "raw")}
        write(meta, old["raw"], args.json or "", args.markdown)
        return
    rounds = results.load(args.raw)
    meta = {
        "format": 2,
        "when": datetime.datetime.now(datetime.timezone.utc).strftime(
            "%Y-%m-%d %H:%M UTC"),
        "command": args.command.strip(),
        "machine": machine(),
        "commit": commit(),
        "seconds": args.seconds,
        "load_average": [args.load_at_start, load_average()],
        "rounds": max((len(r) for r in rounds.values()), default=0),
    }
    write(meta, rounds, args.json, args.markdown)


if __name__ == "__main__":
    main()
